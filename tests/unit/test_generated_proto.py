"""The generated protobuf/gRPC modules are committed; they must match proto/ exactly."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools is not installed (pip install -e '.[dev]')")
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import genproto
    finally:
        sys.path.pop(0)
    targets = [
        (genproto.PACKAGE_DIR, ROOT / "attestation" / "v1"),
        (genproto.PODRESOURCES_DIR, ROOT / "agent" / "sources" / "podresources"),
    ]
    for package_dir, committed in targets:
        written = genproto.generate(tmp_path / package_dir, package_dir)
        assert written, f"genproto produced nothing for proto/{package_dir}"
        for fresh in written:
            old = committed / fresh.name
            assert old.exists(), f"{old} is missing: run `make proto` and commit the result"
            assert old.read_text() == fresh.read_text(), f"{old} is stale against proto/: run `make proto` and commit"
        names = {p.name for p in written}
        stray = [p.name for p in committed.glob("*_pb2*.py*") if p.name not in names]
        assert not stray, f"generated files in {committed} with no .proto behind them: {stray}"


def test_proto_is_not_an_importable_package() -> None:
    """`import proto` belongs to proto-plus; proto/ holds .proto sources only."""
    assert not (ROOT / "proto" / "__init__.py").exists()
    assert not list((ROOT / "proto").rglob("*.py"))
