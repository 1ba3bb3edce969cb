"""The loop: bench JSON on the local device -> plan calibrate -> predictions of held-out runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_planner_local_device import RECORD, write_record

from membound.planner import local_device as ld
from membound.planner.bench_model import compare_record, predict_run
from membound.planner.bench_record import BenchmarkRecord, read_benchmark, record_shape
from membound.planner.calibrate import Calibration, calibrate
from membound.planner.cli import main
from membound.planner.hardware import HardwareTable
from membound.planner.model_cost import model_cost
from membound.planner.roofline import Efficiency

# A SmolLM2-like model (Llama, tied embeddings), small enough to reason about.
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
          "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
          "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192,
          "tie_word_embeddings": True, "rms_norm_eps": 1e-5}  # fmt: skip
LOCAL = ld.LocalDevice.from_dict(RECORD, "rec.json").gpu_spec()
TABLE = HardwareTable((LOCAL, *HardwareTable().gpus))
TRUE = Efficiency(memory=0.6, compute=0.4)  # the "machine" the fabricated runs come from


def bench_doc(kind: str, batch: int, figures: dict[str, float], **config: Any) -> dict:
    return {"kind": kind, "device": {"name": RECORD["device_name"]},
            "model": {"name": "smol", "config": CONFIG},
            "config": {"precision": "fp32", "kv_dtype": "fp32", "tp": 1, "batch_size": batch,
                       "input_len": 128, "output_len": 64, **config},
            "figures": figures}  # fmt: skip


def measured(kind: str, batch: int, true: Efficiency = TRUE, **config: Any) -> dict:
    """What the true machine would measure: the model's prediction at ``true`` efficiencies."""
    rec = BenchmarkRecord.from_dict(bench_doc(kind, batch, {}, **config))
    cost = model_cost(record_shape(rec), "fp32", "fp32")
    pred = predict_run(rec, LOCAL, cost, true)
    figures = {"output_tokens_per_s": pred.output_tokens_per_s}
    if kind == "latency":
        figures |= {"tpot_ms_p50": pred.tpot_s * 1e3, "ttft_ms_p50": pred.ttft_s * 1e3}
    return bench_doc(kind, batch, figures, **config)


def test_calibrating_on_batch_1_predicts_batch_16() -> None:
    b1 = BenchmarkRecord.from_dict(measured("latency", 1), "b1.json")
    cal, fits = calibrate([b1], TABLE)
    assert fits[0].gpu == "local"
    eff = cal.for_gpu("local")
    assert (eff.memory, eff.compute) == pytest.approx((0.6, 0.4))  # TPOT and TTFT, solved
    b16 = BenchmarkRecord.from_dict(measured("latency", 16), "b16.json")
    for name, predicted, actual in compare_record(b16, TABLE, cal).rows:
        assert predicted == pytest.approx(actual, rel=1e-6), name


def test_throughput_runs_calibrate_and_are_predicted() -> None:
    true = Efficiency(compute=0.3)  # one figure fits one factor: the other one is the default
    doc = measured("throughput", 16, true, num_prompts=40)
    run = BenchmarkRecord.from_dict(doc, "t.json")
    cal, fits = calibrate([run], TABLE)
    eff = cal.for_gpu("local")
    bound = predict_run(run, LOCAL, model_cost(record_shape(run), "fp32", "fp32"),
                        Efficiency.ideal()).tpot_bound  # fmt: skip
    assert getattr(eff, bound) == pytest.approx(getattr(true, bound), rel=1e-3)
    name, predicted, actual = compare_record(run, TABLE, cal).rows[0]
    assert name == "output_tokens_per_s" and predicted == pytest.approx(actual, rel=1e-3)


def test_dtype_and_tp_come_from_the_benchmark_json(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bench_doc("latency", 1, {"tpot_ms_mean": 50.0}, tp=2,
                                         precision="bf16", kv_dtype="bf16")))  # fmt: skip
    rec = read_benchmark(path)
    assert (rec.precision, rec.kv_dtype, rec.tp) == ("bf16", "bf16", 2)
    fp32 = model_cost(record_shape(rec), "fp32", "fp32")
    bf16 = model_cost(record_shape(rec), "bf16", "bf16")
    assert fp32.weight_bytes == 2 * bf16.weight_bytes  # everything 4 bytes, not just linears
    assert fp32.kv_bytes_per_token == 2 * 30 * 3 * 64 * 4


def test_medians_are_preferred_to_means() -> None:
    doc = bench_doc("latency", 1, {"tpot_ms_mean": 90.0, "tpot_ms_p50": 60.0,
                                   "ttft_ms_mean": 900.0})  # fmt: skip
    rec = BenchmarkRecord.from_dict(doc)
    assert (rec.tpot_ms, rec.ttft_ms) == (60.0, 900.0)
    assert BenchmarkRecord.from_dict({**doc, "kind": "throughput"}).ttft_ms is None


def test_bench_json_records_the_real_tp_degree() -> None:
    from membound.bench.offline import engine_config_section

    cfg = SimpleNamespace(
        dtype="float32", device="cpu", load_format="auto", seed=0, quantization=None,
        model_config=SimpleNamespace(quantization=None),
        cache_config=SimpleNamespace(cache_dtype="auto"),
        parallel_config=SimpleNamespace(tensor_parallel_size=2),
        scheduler_config=SimpleNamespace(max_model_len=512, max_num_seqs=16,
                                         max_num_batched_tokens=2048),
    )  # fmt: skip
    info = SimpleNamespace(block_size=16, num_blocks=10, kv_bytes=1)  # the engine's EngineInfo
    engine = SimpleNamespace(config=cfg, info=info)
    assert engine_config_section(engine, SimpleNamespace())["tp"] == 2


def test_calibrate_and_compare_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_record(ld.cache_path())  # calibrate reads the cached record; it never measures
    files = []
    for batch in (1, 16):
        path = tmp_path / f"b{batch}.json"
        path.write_text(json.dumps(measured("latency", batch)))
        files.append(str(path))
    out = tmp_path / "cal.json"
    assert main(["plan", "calibrate", files[0], "-o", str(out)]) == 0
    assert json.loads(out.read_text())["per_gpu"]["local"]["memory"] == pytest.approx(0.6)
    capsys.readouterr()
    assert main(["plan", "compare", *files, "--calibration", str(out), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [r["gpu"] for r in runs] == ["local", "local"]
    assert runs[1]["figures"]["tpot_ms"]["ratio"] == pytest.approx(1.0, rel=1e-3)
    assert main(["plan", "compare", *files]) == 0
    assert "ratio" in capsys.readouterr().out


def test_compare_names_an_unknown_device(tmp_path: Path) -> None:
    rec = BenchmarkRecord.from_dict({**measured("latency", 1), "device": {"name": "cpu: Other"}})
    comparison = compare_record(rec, HardwareTable(), Calibration())
    assert not comparison.rows and "--gpu local" in comparison.notes[0]


def test_moe_factor_round_trips_through_calibration_files() -> None:
    cal = Calibration(per_gpu=(("local", dataclasses.replace(TRUE, moe=0.7)),))
    assert Calibration.from_dict(cal.to_dict()).for_gpu("local").moe == 0.7
