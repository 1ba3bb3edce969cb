"""``membound plan --gpu local``: the measured device, its cache, and the CPU roofline."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from membound.planner import local_device as ld
from membound.planner.cli import main
from membound.planner.errors import PlannerError
from membound.planner.hardware import GPUSpec
from membound.planner.roofline import Efficiency, StepTime

RECORD = {
    "probe_version": 1, "created": "2026-12-06T00:00:00Z", "device_type": "cpu",
    "device_name": "cpu: Test CPU", "memory_bytes": 24 << 30, "bandwidth_gbs": 10.0,
    "copy_gbs": 9.0, "read_gbs": 10.0, "matmul_tflops": {"float32": 0.15, "bfloat16": 1.0},
    "matmul_rows_tflops": {"float32": {"1": 0.01, "16": 0.04, "128": 0.1},
                           "bfloat16": {"1": 0.01, "128": 0.5}},
    "overlap": False, "engine_dtype": "float32", "cores": 2, "threads": 1,
}  # fmt: skip


def write_record(path: Path, **changes: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**RECORD, **changes}))
    return path


def test_cache_location_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEMBOUND_CACHE_DIR", str(tmp_path / "x"))
    assert ld.cache_path() == tmp_path / "x" / "local_device.json"
    monkeypatch.delenv("MEMBOUND_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ld.cache_path() == tmp_path / "xdg" / "membound" / "local_device.json"


def test_record_becomes_a_gpu_spec() -> None:
    spec = ld.LocalDevice.from_dict(RECORD, "rec.json").gpu_spec()
    assert spec.name == "local" and spec.max_tp == 1 and not spec.overlap and not spec.tiled_moe
    assert spec.bandwidth_gbs == 10.0 and spec.memory_bytes == 24 << 30
    assert spec.dense_fp32_tflops == 0.15 and spec.dense_bf16_tflops == 1.0
    assert spec.dense_fp8_tflops is None and spec.tdp_w is None
    # the rows curve, interpolated in log(rows) and flat beyond its ends
    assert spec.matmul_tflops("fp32", 16) == pytest.approx(0.04)
    assert spec.matmul_tflops("fp32", 4) == pytest.approx(0.01 + 0.03 * 0.5)
    assert spec.matmul_tflops("fp32", 4096) == pytest.approx(0.1)
    assert spec.matmul_tflops("fp8", 16) is None


def test_bad_record_names_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "rec.json"
    path.write_text(json.dumps({"device_type": "cpu"}))
    with pytest.raises(PlannerError, match="--remeasure"):
        ld.read_local_device(path)


def test_measured_once_then_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Path, str]] = []

    def fake_measure(path: Path, device: str = "auto", extra: tuple[str, ...] = ()) -> None:
        calls.append((path, device))
        write_record(path, device_type="cpu" if device != "cuda" else "cuda")

    monkeypatch.setattr(ld, "measure_local_device", fake_measure)
    first = ld.local_device()
    assert ld.local_device() == first and len(calls) == 1  # the cache answers
    ld.local_device(remeasure=True)
    assert len(calls) == 2
    ld.local_device("cuda")  # the cached record is a CPU: measure what was asked for
    assert calls[-1][1] == "cuda" and len(calls) == 3


def test_plan_local_next_to_named_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    write_record(ld.cache_path())
    argv = ["plan", "--model", "llama-3-8b", "--gpu", "local,h100", "--precision", "bf16",
            "--input-len", "128", "--output-len", "64", "--json"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    local, h100 = doc["results"]
    assert local["gpu"] == "local" and h100["gpu"] == "h100-sxm"
    assert set(local) == set(h100)  # the same outputs as any other option
    assert local["tpot_s"] > 100 * h100["tpot_s"]  # 10 GB/s against 3,350
    assert main(["plan", "--model", "llama-3-8b", "--gpu", "local", "--precision", "fp32"]) == 0
    assert "local" in capsys.readouterr().out


def test_fp32_needs_a_measured_rate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model", "llama-3-8b", "--gpu", "h100", "--precision", "fp32"]) == 2
    assert "dense_fp32_tflops" in capsys.readouterr().err


def test_planning_from_the_cache_imports_no_torch(tmp_path: Path) -> None:
    write_record(ld.cache_path())
    code = ("import sys; from membound.planner.cli import main; "
            "rc = main(['plan', '--model', 'llama-3-8b', '--gpu', 'local']); "
            "assert rc == 0, rc; assert 'torch' not in sys.modules, 'torch imported'")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_no_overlap_adds_compute_and_memory() -> None:
    assert StepTime(2.0, 3.0, 0.5).total_s == 3.5
    assert StepTime(2.0, 3.0, 0.5, overlap=False).total_s == 5.5
    assert Efficiency.ideal().moe == 1.0


def test_probe_writes_a_record_the_planner_reads(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "probe.json"
    cmd = [sys.executable, "-m", "membound.bench.device_probe", "--device", "cpu",
           "--copy-mib", "1", "--matmul-n", "32", "--repeats", "1", "--rows", "1,4",
           "--rows-k", "32", "--output", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = ld.read_local_device(out)
    assert record.device_type == "cpu" and record.memory_bytes > 1 << 30
    from membound.bench.device_probe import engine_default_dtype

    assert record.cores >= 1 and record.threads >= 1
    assert record.engine_dtype == engine_default_dtype("cpu")  # bfloat16 where it is native
    spec = record.gpu_spec()
    assert isinstance(spec, GPUSpec) and spec.bandwidth_gbs > 0 and not spec.overlap
    assert spec.dense_fp32_tflops and spec.dense_fp32_tflops > 0
    assert dict(spec.matmul_rows_tflops)["fp32"][0][0] == 1
    assert record.device_name.startswith("cpu: ")  # as membound bench names the device


def test_cpu_step_adds_rows_beyond_the_first_never_less_than_zero() -> None:
    from membound.planner.model_cost import model_cost
    from membound.planner.presets import preset_shape
    from membound.planner.roofline import decode_step

    spec = ld.LocalDevice.from_dict(RECORD, "rec.json").gpu_spec()
    fp32 = model_cost(preset_shape("llama-3-8b"), "fp32", "fp32")
    ideal = Efficiency.ideal()
    one, many = decode_step(fp32, spec, 1, 100, ideal), decode_step(fp32, spec, 16, 100, ideal)
    assert one.total_s == pytest.approx(one.memory_s + one.compute_s)
    per_row = fp32.linear_flops_per_token_per_gpu + fp32.lm_head_flops_per_token_per_gpu
    attention = 16 * fp32.attention_flops(100) / (0.04e12)
    linear = (16 * per_row / 0.04e12) - per_row / 0.01e12  # 16 rows at the 16-row rate, less one
    assert many.compute_s == pytest.approx(linear + attention)
    # AMX-like bf16: 128 rows run faster than 128 single rows would; the credit stops at 0
    amx = dataclasses.replace(spec, matmul_rows_tflops=(("bf16", ((1, 0.001), (128, 1.0))),))
    bf16 = model_cost(preset_shape("llama-3-8b"), "bf16", "bf16")
    assert decode_step(bf16, amx, 128, 0, ideal).compute_s == 0.0


def test_cached_only_table_refuses_local_without_a_record(monkeypatch: pytest.MonkeyPatch,
                                                          _private_cache: Path) -> None:  # fmt: skip
    """What the web console uses: never the probe; without a record, say how to make one."""
    from argparse import Namespace

    from membound.planner.plan_options import hardware_table

    def no_probe(*args: object, **kwargs: object) -> None:
        raise AssertionError("the probe ran")

    monkeypatch.setattr(ld, "measure_local_device", no_probe)
    with pytest.raises(PlannerError, match="run `membound plan --gpu local` once"):
        hardware_table(Namespace(gpu="local,h100"), measure=False)
    assert hardware_table(Namespace(gpu="h100"), measure=False).get("h100").name == "h100-sxm"
    write_record(ld.cache_path())
    table = hardware_table(Namespace(gpu="local,h100"), measure=False)
    assert table.get("local").display_name == "local cpu: Test CPU"
