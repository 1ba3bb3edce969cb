"""benchmarks/cpu_peers_serve.py's own logic, without vLLM or llama.cpp: the summary over
rounds, the ratios, the exact-length check, the argument checks, the process-tree memory
helpers, one measured round against the fake server, and --from-json."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from membound.bench.openai_client import RequestResult

pytest.importorskip("aiohttp")  # the 'bench' extra
from fake_openai_server import running_server  # noqa: E402

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def serve():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCH))  # the script imports its sibling cpu_peers_servers
    try:
        path = BENCH / "cpu_peers_serve.py"
        spec = importlib.util.spec_from_file_location("cpu_peers_serve", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def round_figures(tok_s: float, ttft: float, itl: float, rss: float, **kw: float) -> dict:
    return {"output_tokens_per_s": tok_s, "ttft_ms_mean": ttft, "itl_ms_mean": itl,
            "failed": 0, "not_exact_output_len": 0,
            "memory": {"peak_rss_mib": rss, "sum_vmhwm_mib": rss + 1, "pss_mib": rss - 1},
            **kw}  # fmt: skip


def test_summary_takes_medians_sums_and_maxima(serve) -> None:  # type: ignore[no-untyped-def]
    rounds = [round_figures(100, 50, 10, 900), round_figures(300, 70, 30, 1000, failed=2),
              round_figures(200, 60, 20, 950, not_exact_output_len=1)]  # fmt: skip
    s = serve.summarize_rounds(rounds)
    assert s["rounds"] == 3 and s["output_tokens_per_s"] == 200 and s["ttft_ms_mean"] == 60
    assert s["output_tokens_per_s_all"] == [100, 300, 200]
    assert s["failed"] == 2 and s["not_exact_output_len"] == 1
    assert s["peak_rss_mib"] == 1000 and s["sum_vmhwm_mib"] == 1001 and s["pss_mib"] == 999
    assert s["itl_ms_p99"] is None  # no round has it
    assert serve.summarize_rounds([])["output_tokens_per_s"] is None


def test_ratios_say_which_way_is_better(serve) -> None:  # type: ignore[no-untyped-def]
    summary = {"membound-bf16": {"output_tokens_per_s": 200, "ttft_ms_mean": 50, "itl_ms_mean": 20},
               "vllm-bf16": {"output_tokens_per_s": 100, "ttft_ms_mean": 100, "itl_ms_mean": 10},
               "llamacpp-q4_1": {"output_tokens_per_s": None}}  # fmt: skip
    r = serve.ratios(summary)
    assert r == {"output_tokens_per_s: membound-bf16 vs vllm-bf16": 2.0,
                 "ttft_ms_mean: membound-bf16 vs vllm-bf16": 2.0,
                 "itl_ms_mean: membound-bf16 vs vllm-bf16": 0.5}  # fmt: skip


def test_exactness_needs_a_length_stop_and_the_count(serve) -> None:  # type: ignore[no-untyped-def]
    def res(n: int, reason: str, ok: bool = True) -> RequestResult:
        return RequestResult(success=ok, output_len=n, finish_reason=reason, itl_s=[0.1] * (n - 1))

    got = serve.exactness([res(8, "length"), res(8, "stop"), res(7, "length"),
                           res(8, "length", ok=False)], 8)  # fmt: skip
    assert got == {"exact_output_len": 1, "not_exact_output_len": 2,
                   "chunks_per_request_mean": (8 + 8 + 7) / 3}  # fmt: skip


def test_argument_checks_name_the_fix(serve) -> None:  # type: ignore[no-untyped-def]
    errors: list[str] = []
    a = serve.parse_args(["--model", "m", "--engines", "vllm", "llamacpp", "--input-len", "900"])
    serve.check_args(a, errors.append)
    assert any("--vllm-python" in e for e in errors)
    assert any("--llamacpp-python" in e and "--gguf" in e for e in errors)
    assert any("--max-len" in e for e in errors)
    errors.clear()
    serve.check_args(serve.parse_args(["--model", "m", "--engines", "membound"]), errors.append)
    assert errors == []


def test_process_tree_memory(serve) -> None:  # type: ignore[no-untyped-def]
    servers = sys.modules["cpu_peers_servers"]
    assert os.getpid() in servers.group_pids(os.getpgid(0))
    assert servers.proc_status_kib(os.getpid(), "VmRSS") > 0
    assert servers.proc_status_kib(os.getpid(), "NoSuchKey") == 0
    assert servers.proc_status_kib(2**22 + 12345, "VmRSS") == 0  # no such process


def test_one_round_against_a_fake_server(serve) -> None:  # type: ignore[no-untyped-def]
    servers = sys.modules["cpu_peers_servers"]
    from fake_openai_server import MODEL

    from membound.bench.datasets import random_requests

    a = argparse.Namespace(served_name=MODEL, max_concurrency=4, output_len=5)
    with running_server(first_delay=0.0, gap=0.001) as (url, stats):
        server = servers.Server("fake", [], {}, int(url.rsplit(":", 1)[1]))
        figs = serve.measure(server, random_requests(6, 4, 5, 300, seed=0), a)
    assert stats.max_in_flight <= 4 and figs["completed"] == 6 and figs["failed"] == 0
    assert figs["total_output_tokens"] == 30 and figs["chunks_per_request_mean"] == 5
    # the fake server sends no finish_reason: not counted as an exact length stop
    assert figs["not_exact_output_len"] == 6
    assert figs["memory"]["processes"] == 0 and "load_after" in figs


def test_from_json_resummarizes_and_plots(  # type: ignore[no-untyped-def]
    serve, tmp_path: Path
) -> None:
    run = tmp_path / "run.json"
    config = {"model": "/m/smollm2", "max_concurrency": 16, "input_len": 8, "output_len": 4,
              "threads": 1}  # fmt: skip
    engines = {"membound-bf16": {"rounds": [round_figures(90, 40, 9, 800)]},
               "vllm-bf16": {"rounds": [round_figures(100, 50, 10, 900)]}}  # fmt: skip
    run.write_text(json.dumps({"config": config, "engines": engines}))
    png = tmp_path / "run.png"
    has_mpl = importlib.util.find_spec("matplotlib") is not None
    serve.main(["--from-json", str(run), *(["--plot", str(png)] if has_mpl else [])])
    doc = json.loads(run.read_text())
    assert doc["stage"] == "done" and doc["engines"]["vllm-bf16"]["summary"]["rounds"] == 1
    assert doc["figures"]["output_tokens_per_s: membound-bf16 vs vllm-bf16"] == pytest.approx(0.9)
    if has_mpl:
        assert png.read_bytes().startswith(b"\x89PNG")
