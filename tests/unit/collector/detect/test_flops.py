"""GPU peak table: NVML names map to the right row; figures are dense; unknown is None."""

from __future__ import annotations

import pytest

from collector.detect.flops import PEAKS, lookup, model_key


@pytest.mark.parametrize(
    ("nvml_name", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "H100-SXM"),
        ("NVIDIA H100 SXM5 80GB", "H100-SXM"),
        ("NVIDIA H100 PCIe", "H100-PCIe"),
        ("NVIDIA H100 NVL", "H100-NVL"),
        ("NVIDIA H200", "H200-SXM"),
        ("NVIDIA H200 NVL", "H200-NVL"),
        ("NVIDIA H800", "H800-SXM"),
        ("NVIDIA H800 PCIe", "H800-PCIe"),
        ("NVIDIA H20", "H20"),
        ("NVIDIA GH200 480GB", "GH200"),
        ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
        ("NVIDIA A100-PCIE-40GB", "A100-40GB"),
        ("NVIDIA A100 80GB PCIe", "A100-80GB"),
        ("NVIDIA A800-SXM4-80GB", "A800"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA GB200", "GB200"),
    ],
)
def test_nvml_names_map_to_rows(nvml_name: str, key: str) -> None:
    assert model_key(nvml_name) == key


@pytest.mark.parametrize("name", ["NVIDIA GeForce RTX 4090", "Tesla V100-SXM2-32GB", "NVIDIA L4", "", "AMD MI300X"])
def test_unknown_models_are_none_not_a_guess(name: str) -> None:
    assert lookup(name) is None


def test_dense_figures_are_half_the_sparse_datasheet_numbers() -> None:
    h100 = PEAKS["H100-SXM"]
    assert h100.bf16_dense_flops == pytest.approx(989.5e12)  # datasheet 1,979 TFLOPS with sparsity
    assert h100.fp8_dense_flops == pytest.approx(1979e12)
    assert PEAKS["A100-80GB"].bf16_dense_flops == pytest.approx(312e12)
    assert PEAKS["B200"].bf16_dense_flops == pytest.approx(2.25e15)


def test_every_row_has_a_source_and_fp8_at_least_bf16() -> None:
    required = {"H100-SXM", "H100-PCIe", "H100-NVL", "H200-SXM", "H800-SXM", "H20", "A100-40GB", "A100-80GB"}
    required |= {"A800", "L40S", "B200", "GB200"}
    assert required <= set(PEAKS)
    for key, p in PEAKS.items():
        assert p.source, f"{key} has no source"
        assert p.bf16_dense_flops > 0
        assert p.upper_flops >= p.bf16_dense_flops
        if p.fp8_dense_flops is None:
            assert p.upper_flops == p.bf16_dense_flops, f"{key}: no FP8, the upper bound uses BF16"
