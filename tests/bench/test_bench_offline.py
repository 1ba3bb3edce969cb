"""``bench throughput`` / ``bench latency`` / ``bench report`` on a tiny model: well-formed
JSON the planner can read, a PNG, energy "not measured" on CPU, roofline arithmetic."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from membound.bench import latency, offline
from membound.entrypoints.cli import main
from membound.planner.calibrate import read_benchmark

PNG = b"\x89PNG\r\n\x1a\n"
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
TOP_KEYS = {
    "schema_version",
    "kind",
    "created",
    "command",
    "commit",
    "commit_dirty",
    "machine",
    "versions",
    "device",
    "model",
    "config",
    "figures",
    "energy",
    "cost",
    "samples",
    "notes",
}
ENGINE = ["--dtype", "float32", "--block-size", "4", "--max-num-seqs", "8", "--num-kv-blocks", "64"]


RUN_OPTIONS = {
    "throughput": "--num-prompts 6 --input-len 8 --output-len 4 --random-range-ratio 0.5",
    "latency": "--batch-size 2 --input-len 8 --output-len 4 --num-iters 2 --num-iters-warmup 1",
}


def plot_args(path: Path) -> list[str]:
    """``--plot`` where matplotlib (the 'bench' extra) is installed."""
    return ["--plot", str(path)] if HAVE_MPL else []


@pytest.fixture(scope="module")
def runs(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bench")
    files = {}
    for kind, options in RUN_OPTIONS.items():
        files[kind] = out / f"{kind}.json"
        argv = ["bench", kind, str(tiny_llama), *ENGINE, *options.split(), "--disable-tqdm"]
        rc = main([*argv, "--output-json", str(files[kind]), *plot_args(out / f"{kind}.png")])
        assert rc == 0
    return files


@pytest.mark.skipif(not HAVE_MPL, reason="needs matplotlib (the 'bench' extra)")
def test_pngs_written(runs: dict[str, Path]) -> None:
    for path in runs.values():
        assert path.with_suffix(".png").read_bytes().startswith(PNG)


def test_throughput_json_and_png(runs: dict[str, Path]) -> None:
    doc = json.loads(runs["throughput"].read_text())
    assert set(doc) == TOP_KEYS and doc["kind"] == "throughput" and doc["schema_version"] == 1
    f = doc["figures"]
    assert f["num_requests"] == 6 and f["output_tokens"] > 0
    assert f["output_tokens_per_s"] == pytest.approx(f["output_tokens"] / f["elapsed_s"])
    assert f["output_tokens_per_s_per_gpu"] == f["output_tokens_per_s"]
    assert f["requests_per_s"] == pytest.approx(6 / f["elapsed_s"])
    assert f["total_tokens_per_s"] > f["output_tokens_per_s"]
    assert f["energy_j_per_token"] == "not measured" and not doc["energy"]["measured"]
    assert f["cost_per_million_output_tokens"] is None  # a CPU has no table price
    assert doc["device"]["type"] == "cpu" and doc["model"]["config"]["vocab_size"] == 320
    assert len(doc["samples"]["e2e_ms"]) == 6 and doc["config"]["batch_size"] >= 1


def test_latency_json_and_png(runs: dict[str, Path]) -> None:
    doc = json.loads(runs["latency"].read_text())
    assert set(doc) == TOP_KEYS and doc["kind"] == "latency"
    f, c = doc["figures"], doc["config"]
    assert (c["batch_size"], c["input_len"], c["output_len"], c["precision"]) == (2, 8, 4, "fp32")
    assert len(doc["samples"]["ttft_ms"]) == 2 and len(doc["samples"]["tpot_ms"]) == 2 * 3
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert f[f"{key}_p50"] <= f[f"{key}_p90"] <= f[f"{key}_p99"]
    assert f["achieved_weight_bandwidth_gbs"] > 0 and f["prefill_tflops"] > 0
    assert f["datasheet_bandwidth_gbs"] is None and f["bandwidth_fraction_of_datasheet"] is None
    assert f["measured_copy_gbs"] > 0 and 0 < f["bandwidth_fraction_of_measured"]
    assert f["energy_j_per_token"] == "not measured"
    assert any("no datasheet figure" in n for n in doc["notes"])


def test_planner_reads_the_json(runs: dict[str, Path]) -> None:
    rec = read_benchmark(runs["latency"])
    doc = json.loads(runs["latency"].read_text())
    assert rec.device_name == doc["device"]["name"] and rec.model_config["hidden_size"] == 64
    assert (rec.batch_size, rec.input_len, rec.output_len, rec.tp) == (2, 8, 4, 1)
    assert rec.tpot_ms_mean == pytest.approx(doc["figures"]["tpot_ms_mean"])
    assert rec.ttft_ms_mean == pytest.approx(doc["figures"]["ttft_ms_mean"])
    assert rec.achieved_weight_bandwidth_gbs == pytest.approx(
        doc["figures"]["achieved_weight_bandwidth_gbs"]
    )
    assert rec.avg_power_w is None  # "not measured" is not a number
    assert read_benchmark(runs["throughput"]).output_tokens_per_s > 0


def test_report_table_and_plot(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png, rows = tmp_path / "report.png", tmp_path / "rows.json"
    files = [str(runs["throughput"]), str(runs["latency"])]
    rc = main(["bench", "report", *files, "--output-json", str(rows), *plot_args(png)])
    out = capsys.readouterr().out
    assert rc == 0 and "out tok/s" in out and "throughput.json" in out and "latency.json" in out
    if HAVE_MPL:
        assert png.read_bytes().startswith(PNG)
    table = json.loads(rows.read_text())["rows"]
    assert [r["kind"] for r in table] == ["throughput", "latency"]
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["bench", "report", str(bad)]) == 2
    assert main(["bench", "report", str(tmp_path / "missing.json")]) == 2


def test_roofline_arithmetic(tiny_llama: Path) -> None:
    from membound.engine.engine_args import EngineArgs
    from membound.engine.llm_engine import LLMEngine

    engine = LLMEngine.from_engine_args(
        EngineArgs(model=str(tiny_llama), block_size=4, num_kv_blocks=32, dtype="float32")
    )
    counts = offline.model_bytes(engine)
    mc = engine.config.model_config  # hidden 64, 2 layers, 4 heads / 2 KV heads of 16, ffn 112
    embed = mc.vocab_size * mc.hidden_size
    per_layer = 64 * (64 + 2 * 32) + 64 * 64 + 2 * 64 * 112 + 112 * 64  # qkv, o, gate_up, down
    assert counts.linear_params_per_token == 2 * per_layer
    assert counts.lm_head_params == embed
    assert counts.weight_bytes_read_per_step == counts.weight_bytes - embed * 4
    # KV read per decode step: 2 (K, V) x layers x kv_heads x head_dim x 4 bytes per token
    assert latency.kv_bytes_read(engine, [10, 12], 3) == pytest.approx(3 * 2 * 2 * 2 * 16 * 4 * 11)
    flops = latency.prefill_flops(engine, counts, 2, 8)
    attention = 4 * 4 * 16 * 2 * sum(range(1, 9))
    assert flops == 2 * (2 * 2 * per_layer * 8 + 2 * embed + attention)


def test_help_lists_the_benchmarks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(k in out for k in ("throughput", "latency", "serve", "report"))


def test_tied_lm_head_reads_the_embedding(tmp_path: Path) -> None:
    from membound.engine.engine_args import EngineArgs
    from membound.engine.llm_engine import LLMEngine
    from tiny_models import make_checkpoint

    folder = make_checkpoint(tmp_path / "tied", "llama3_tied", seed=0)
    engine = LLMEngine.from_engine_args(EngineArgs(model=str(folder), num_kv_blocks=8))
    counts = offline.model_bytes(engine)
    assert engine.config.model_config.tie_word_embeddings
    assert counts.lm_head_params == 320 * 64
    assert counts.weight_bytes_read_per_step == counts.weight_bytes  # the table is lm_head too
