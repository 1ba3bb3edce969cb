"""benchmarks/cpu_peers.py's bandwidth bounds, without any engine: the offline bound
against a hand count, and each engine's summary carrying it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def peers():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("cpu_peers", BENCH / "cpu_peers.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["cpu_peers"] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("cpu_peers", None)
        sys.path.remove(str(BENCH))


def test_offline_bound_counts_weights_once_per_step_and_every_live_cache(peers) -> None:
    # two requests: prompt 10 / 2 outputs, prompt 4 / 3 outputs; 100 decoder + 20 head
    # parameters at 2 bytes, 6 KV values per token at 1 byte, 1 GB/s
    shape = peers.OfflineShape(((10, 2), (4, 3)), kv_values=6)
    steps = [(10 + 4) * 6, (11 + 5) * 6, 6 * 6]  # the caches read at steps 0, 1, 2
    total = 3 * (100 * 2 + 20 * 2) + sum(steps)
    got = peers.offline_bound_tok_s(shape, (100, 20), 2.0, 2.0, 1.0, 1.0)
    assert got == pytest.approx(5 / (total / 1e9))
    # half the KV bytes can only raise it
    assert peers.offline_bound_tok_s(shape, (100, 20), 2.0, 2.0, 0.5, 1.0) > got


def test_summary_reports_offline_bound_fraction(peers, tmp_path) -> None:
    cfg = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
           "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 32}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert peers.kv_values_per_token(str(tmp_path)) == 2 * 2 * 1 * 4
    shape = peers.offline_shape(str(tmp_path), 4)
    assert len(shape.lengths) == 4 and all(32 <= p <= 512 and 32 <= o <= 256
                                           for p, o in shape.lengths)  # fmt: skip
    n_params = peers.params_read_per_step(str(tmp_path))
    e = peers.Engine("membound-bf16-kvfp8", [], "bfloat16", kv_precision="fp8",
                     info={"peak_rss_mib": 1.0})  # fmt: skip
    e.results["offline"] = [{"elapsed_s": 2.0, "output_tokens": 100, "peak_rss_mib": 1.0}]
    s = peers.summarize(e, n_params, 10.0, shape)
    bound = peers.offline_bound_tok_s(shape, n_params, 2.0, 2.0, 1.0, 10.0)
    assert s["offline_bandwidth_bound_tok_s"] == pytest.approx(bound)
    assert s["offline_bound_fraction"] == pytest.approx(50.0 / bound)


def test_figures_compare_int8_at_the_same_precision(peers) -> None:
    """membound int8 against vLLM on the same model's W8A8 checkpoint, and against its bf16."""
    s = {"membound-int8": {"offline_output_tok_s": 600.0, "batch1_tpot_ms": 5.0},
         "vllm-int8": {"offline_output_tok_s": 400.0, "batch1_tpot_ms": 10.0},
         "vllm-bf16": {"offline_output_tok_s": 300.0, "batch1_tpot_ms": 15.0}}  # fmt: skip
    f = peers.figures(s)
    assert f["offline_membound_int8_over_vllm_int8"] == pytest.approx(1.5)
    assert f["offline_membound_int8_over_vllm_bf16"] == pytest.approx(2.0)
    assert f["int8_batch1_tpot_vllm_over_membound"] == pytest.approx(2.0)
    assert "offline_membound_over_vllm" not in f  # (no membound bf16 here)
    s["membound-int8-ckpt"] = {"offline_output_tok_s": 640.0, "batch1_tpot_ms": 4.0}
    f = peers.figures(s)  # membound on vLLM's own checkpoint: the same numerics
    assert f["offline_membound_int8ckpt_over_vllm_int8"] == pytest.approx(1.6)
    assert f["int8ckpt_batch1_tpot_vllm_over_membound"] == pytest.approx(2.5)
