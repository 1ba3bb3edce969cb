"""The hardware table and user hardware files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from membound.planner.errors import PlannerError
from membound.planner.hardware import GIB, HardwareTable, load_hardware

REQUIRED = ("a100-80gb-sxm", "h100-sxm", "h100-pcie", "h200", "b200", "mi300x", "l40s", "tpu-v5e")


def test_table_has_the_issue_gpus_with_dense_rates() -> None:
    table = HardwareTable()
    assert set(REQUIRED) <= set(table.names)
    h100 = table.get("h100-sxm")
    assert (h100.bandwidth_gbs, h100.dense_bf16_tflops, h100.dense_fp8_tflops) == (3350, 989, 1979)
    assert h100.dense_fp4_tflops is None
    assert table.get("a100").dense_fp8_tflops is None
    assert table.get("b200").dense_fp4_tflops == 9000
    assert table.get("l40s").dense_bf16_tflops == 362  # dense, not the 733 sparse figure
    assert 79 < h100.memory_gib < 80  # 81,559 MiB reported


def test_every_price_has_source_and_date() -> None:
    for gpu in HardwareTable().gpus:
        if gpu.price_per_gpu_hour is not None:
            assert gpu.price_source and gpu.price_date, gpu.name
        assert gpu.spec_source, gpu.name


def test_lookup_by_alias_and_case_and_unknown_lists_choices() -> None:
    table = HardwareTable()
    assert table.get("H100").name == "h100-sxm"
    assert table.get("H100 SXM").name == "h100-sxm"
    assert [g.name for g in table.select("h100,h200,h100")] == ["h100-sxm", "h200"]
    assert len(table.select(None)) == len(table.gpus)
    with pytest.raises(PlannerError, match="'h900' is not known; use one of .*'h200'"):
        table.get("h900")


@pytest.mark.parametrize(
    ("reported", "name"),
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb-sxm"),
        ("AMD Instinct MI300X", "mi300x"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA B200", "b200"),
    ],
)
def test_match_reported_device_names(reported: str, name: str) -> None:
    gpu = HardwareTable().match_device(reported)
    assert gpu is not None and gpu.name == name


def test_hardware_file_toml_overrides_and_adds(tmp_path: Path) -> None:
    path = tmp_path / "hw.toml"
    path.write_text(
        '[gpu.h100-sxm]\nprice_per_gpu_hour = 2.69\nprice_source = "RunPod spot"\n'
        'price_date = "2026-03"\n\n'
        "[gpu.my-gpu]\nmemory_gib = 96\nbandwidth_gbs = 4000\ndense_bf16_tflops = 500\n"
        "dense_fp8_tflops = 1000\ntdp_w = 600\nprice_per_gpu_hour = 2.0\n"
    )
    table = load_hardware(path)
    assert table.get("h100").price_per_gpu_hour == 2.69
    assert table.get("h100").bandwidth_gbs == 3350  # untouched fields kept
    mine = table.get("my-gpu")
    assert mine.memory_bytes == 96 * GIB and mine.dense_fp8_tflops == 1000


def test_hardware_file_json_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "hw.json"
    path.write_text(json.dumps({"gpu": {"x1": {"memory_gb": 24, "bandwidth_gbs": 1000,
                                               "dense_bf16_tflops": 100}}}))  # fmt: skip
    assert load_hardware(path).get("x1").memory_bytes == 24 * 10**9
    path.write_text(json.dumps({"gpu": {"x2": {"bandwidth_gbs": 1000}}}))
    with pytest.raises(PlannerError, match="needs memory_bytes, dense_bf16_tflops"):
        load_hardware(path)
    path.write_text(json.dumps({"gpu": {"h200": {"bandwith_gbs": 1}}}))
    with pytest.raises(PlannerError, match="unknown field 'bandwith_gbs'"):
        load_hardware(path)
    path.write_text(json.dumps({"gpus": {}}))
    with pytest.raises(PlannerError, match="'gpu' table"):
        load_hardware(path)
    with pytest.raises(PlannerError, match="does not exist"):
        load_hardware(tmp_path / "nope.toml")


def test_with_prices() -> None:
    table = HardwareTable().with_prices({"*": 1.0, "h200": 3.0})
    assert table.get("h200").price_per_gpu_hour == 3.0
    assert table.get("tpu-v5e").price_per_gpu_hour == 1.0
