"""Calibration from (fabricated) membound benchmark JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from membound.planner.calibrate import BenchmarkRecord, Calibration, calibrate, read_benchmark
from membound.planner.cli import main
from membound.planner.errors import PlannerError
from membound.planner.hardware import HardwareTable
from membound.planner.model_cost import model_cost
from membound.planner.presets import preset_shape
from membound.planner.roofline import Efficiency, decode_step

TABLE = HardwareTable()


def bench(tmp_path: Path, name: str, **figures: float) -> Path:
    doc = {
        "device": {"name": "NVIDIA H100 80GB HBM3", "driver": "550.54"},
        "model": {"name": "llama-3-8b"},
        "config": {
            "precision": "bf16",
            "kv_dtype": "bf16",
            "tp": 1,
            "batch_size": 1,
            "input_len": 128,
            "output_len": 128,
        },  # fmt: skip
        "figures": figures,
    }
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_memory_efficiency_from_tpot(tmp_path: Path) -> None:
    cost = model_cost(preset_shape("llama-3-8b"), "bf16", "bf16")
    ideal = decode_step(cost, TABLE.get("h100"), 1, 128 + 64, Efficiency.ideal())
    tpot_ms = ideal.memory_s / 0.6 * 1e3  # a run at 60 % of datasheet bandwidth
    rec = read_benchmark(bench(tmp_path, "a.json", tpot_ms_mean=tpot_ms))
    cal, fits = calibrate([rec], TABLE)
    assert fits[0].gpu == "h100-sxm"
    assert cal.for_gpu("h100-sxm").memory == pytest.approx(0.6)
    assert cal.for_gpu("h200") == Efficiency()  # no data: defaults


def test_bandwidth_compute_and_power_fields(tmp_path: Path) -> None:
    files = [
        bench(tmp_path, "a.json", achieved_weight_bandwidth_gbs=2680.0, avg_power_w=350.0),
        bench(
            tmp_path,
            "b.json",
            achieved_weight_bandwidth_gbs=2010.0,
            energy_j_per_token=2.0,
            output_tokens_per_s=245.0,
        ),  # fmt: skip
    ]
    cal, _ = calibrate([read_benchmark(f) for f in files], TABLE)
    eff = cal.for_gpu("h100-sxm")
    assert eff.memory == pytest.approx((0.8 + 0.6) / 2)
    assert eff.power_fraction == pytest.approx((0.5 + 0.7) / 2)
    assert eff.power_measured and "calibrated from 2" in eff.source


def test_compute_efficiency_from_ttft_of_a_long_prompt(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({
        "device": {"name": "NVIDIA H100 80GB HBM3"}, "model": "llama-3-8b",
        "config": {"batch_size": 4, "input_len": 4096, "output_len": 1},
        "figures": {"ttft_ms_mean": 500.0},
    }))  # fmt: skip
    cal, fits = calibrate([read_benchmark(path)], TABLE)
    assert fits[0].compute is not None and 0.4 < fits[0].compute < 0.6


def test_impossible_and_unknown_records_are_reported_not_used(tmp_path: Path) -> None:
    fast = bench(tmp_path, "fast.json", achieved_weight_bandwidth_gbs=5000.0)
    cal, fits = calibrate([read_benchmark(fast)], TABLE)
    assert cal.per_gpu == () and "impossible" in fits[0].notes[0]
    rec = BenchmarkRecord.from_dict({"device": {"name": "Mystery GPU"}, "figures": {}})
    assert calibrate([rec], TABLE)[1][0].gpu is None
    with pytest.raises(PlannerError, match="device.name"):
        BenchmarkRecord.from_dict({"figures": {}})


def test_calibrate_cli_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cal.json"
    src = bench(tmp_path, "a.json", achieved_weight_bandwidth_gbs=2680.0)
    assert main(["plan", "calibrate", str(src), "-o", str(out)]) == 0
    assert "h100-sxm: memory 0.800" in capsys.readouterr().out
    assert Calibration.load(out).for_gpu("h100-sxm").memory == pytest.approx(0.8)
    assert main(["plan", "--model", "llama-3-8b", "--gpu", "h100", "--calibration", str(out),
                 "--json"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["results"][0]["efficiency"]["memory"] == pytest.approx(0.8)
    assert main(["plan", "calibrate", str(tmp_path / "missing.json")]) == 2
