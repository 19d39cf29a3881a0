"""The additive MIG and sharing fields of the usage-window statement: exact round trip,
strict parsing that names the path, and statements without them read exactly as before."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from test_statement import full_window

from attestation.errors import SchemaError
from attestation.statement import Mig, MigInstance, UsageWindow, Workload, parse_statement, statement_bytes

GIB = 2**30


def mig_window() -> UsageWindow:
    """full_window() with GPU 0 in MIG mode: t-17 in a 3g instance, one idle 1g instance
    whose readings an A100 cannot give, and a split by slices."""
    w = full_window()
    g0 = msgspec.structs.replace(
        w.gpus[0],
        util_mean_permille=None,
        unavailable={**w.gpus[0].unavailable, "util_mean_permille": "NVML_ERROR_NOT_SUPPORTED"},
        split_method="mig_slices",
        workloads=(Workload("t-17", "k8s_pod", "team-a/train-0", 1, 20 * GIB, 428, 25_714),),
        sharing="mig",
        mig=Mig(
            slices_total=7,
            instances=(
                MigInstance(
                    gpu_instance_id=1,
                    compute_instance_id=0,
                    uuid="MIG-11111111-0000-5000-8000-000000000001",
                    slices=3,
                    samples=60,
                    mem_total_bytes=40 * GIB,
                    mem_used_max_bytes=21 * GIB,
                    sm_active_mean_permille=600,
                    tensor_active_mean_permille=0,  # a real zero
                    processes=1,
                    workloads=(("t-17", "k8s_pod", "team-a/train-0"),),
                ),
                MigInstance(
                    gpu_instance_id=5,
                    compute_instance_id=None,
                    uuid=None,
                    slices=1,
                    samples=60,
                    mem_total_bytes=10 * GIB,
                    mem_used_max_bytes=0,
                    sm_active_mean_permille=None,
                    tensor_active_mean_permille=None,
                    processes=0,
                    unavailable={
                        "compute_instance_id": "NVML_ERROR_NO_PERMISSION",
                        "uuid": "NVML_ERROR_NO_PERMISSION",
                        "sm_active_mean_permille": "gpm_not_supported",
                        "tensor_active_mean_permille": "gpm_not_supported",
                    },
                ),
            ),
        ),
    )
    g1 = msgspec.structs.replace(w.gpus[1], sharing="time_slice")
    return msgspec.structs.replace(w, gpus=(g0, g1))


def _doc() -> dict[str, Any]:
    return json.loads(statement_bytes(mig_window()))  # type: ignore[no-any-return]


def test_mig_statement_round_trips_exactly() -> None:
    data = statement_bytes(mig_window())
    assert parse_statement(data) == mig_window()
    assert statement_bytes(parse_statement(data)) == data, "the same window always signs the same bytes"


def test_statements_without_the_new_fields_are_unchanged_and_still_parse() -> None:
    old = full_window()
    doc = json.loads(statement_bytes(old))
    for gpu in doc["predicate"]["gpus"]:
        assert "sharing" not in gpu and "mig" not in gpu, "absent fields are omitted, so old bytes stay the same"
    back = parse_statement(statement_bytes(old))
    assert back == old and back.gpus[0].sharing is None and back.gpus[0].mig is None


def test_a_null_sharing_or_mig_reads_as_absent() -> None:
    doc = json.loads(statement_bytes(full_window()))
    doc["predicate"]["gpus"][0]["sharing"] = None
    doc["predicate"]["gpus"][0]["mig"] = None
    assert parse_statement(json.dumps(doc).encode()) == full_window()


G0 = ("predicate", "gpus", 0)
I1 = (*G0, "mig", "instances", 1)


def _edit(path: tuple[Any, ...], value: Any) -> bytes:
    doc = _doc()
    obj: Any = doc
    for k in path[:-1]:
        obj = obj[k]
    if value is KeyError:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        ((*G0, "sharing"), "fractional", "$.predicate.gpus[0].sharing"),
        ((*G0, "sharing"), 3, "$.predicate.gpus[0].sharing"),
        ((*G0, "mig"), [], "$.predicate.gpus[0].mig"),
        ((*G0, "mig"), None, "$.predicate.gpus[0].split_method"),  # mig_slices without mig
        ((*G0, "mig", "slices_total"), None, "$.predicate.gpus[0].mig.slices_total"),  # null, no reason
        ((*G0, "mig", "slices_total"), 0, "$.predicate.gpus[0].mig.slices_total"),
        ((*G0, "mig", "instances"), {}, "$.predicate.gpus[0].mig.instances"),
        ((*I1, "uuid"), 5, "$.predicate.gpus[0].mig.instances[1].uuid"),
        ((*I1, "slices"), 8, "$.predicate.gpus[0].mig.instances[1].slices"),
        ((*I1, "slices"), None, "$.predicate.gpus[0].mig.instances[1]"),  # null, no reason
        ((*I1, "slices"), 1.0, "$.predicate.gpus[0].mig.instances[1].slices"),
        ((*I1, "samples"), KeyError, "$.predicate.gpus[0].mig.instances[1].samples"),
        ((*I1, "mem_used_max_bytes"), KeyError, "$.predicate.gpus[0].mig.instances[1].mem_used_max_bytes"),
        ((*I1, "sm_active_mean_permille"), 1001, "$.predicate.gpus[0].mig.instances[1].sm_active_mean_permille"),
        ((*I1, "unavailable"), {}, "$.predicate.gpus[0].mig.instances[1]"),  # four nulls lose their reasons
        ((*I1, "workloads"), [{"tenant": "t", "kind": "vm", "workload": "w"}], "instances[1].workloads[0].kind"),
    ],
    ids=[
        "unknown-sharing",
        "sharing-not-a-string",
        "mig-not-an-object",
        "mig-slices-without-mig",
        "slices-total-null-unexplained",
        "slices-total-zero",
        "instances-not-a-list",
        "uuid-not-a-string",
        "slices-over-total",
        "slices-null-unexplained",
        "slices-float",
        "samples-missing",
        "nullable-left-out",
        "permille-over-1000",
        "nulls-without-reasons",
        "instance-workload-kind",
    ],
)
def test_mig_schema_violation_names_the_path(path: tuple[Any, ...], value: Any, where: str) -> None:
    with pytest.raises(SchemaError) as exc:
        parse_statement(_edit(path, value))
    assert where in str(exc.value), f"error should name {where}: {exc.value}"


def test_mig_slices_shares_may_not_exceed_the_gpu() -> None:
    doc = _doc()
    gpu = doc["predicate"]["gpus"][0]
    gpu["workloads"].append(dict(gpu["workloads"][0], tenant="t-99", share_permille=600))
    with pytest.raises(SchemaError, match="more than 1000"):
        parse_statement(json.dumps(doc).encode())
    gpu["workloads"][-1]["share_permille"] = 572  # 428 + 572 = 1000: the whole GPU
    assert len(parse_statement(json.dumps(doc).encode()).gpus[0].workloads) == 2


def test_unknown_fields_inside_mig_are_ignored() -> None:
    doc = _doc()
    doc["predicate"]["gpus"][0]["mig"]["profile_ids"] = [9]
    doc["predicate"]["gpus"][0]["mig"]["instances"][0]["engines"] = {"nvdec": 1}
    assert parse_statement(json.dumps(doc).encode()) == mig_window()
