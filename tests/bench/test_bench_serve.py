"""``bench serve`` against a fake OpenAI-compatible server on loopback: every request is
counted, metrics follow vLLM's definitions, JSON and PNG are written."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import pytest

from membound.bench.datasets import random_requests
from membound.bench.serve import run_load, serve_figures, timeline
from membound.entrypoints.cli import main

pytest.importorskip("aiohttp")  # the 'bench' extra
from fake_openai_server import MODEL, free_port, running_server  # noqa: E402

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None

PNG = b"\x89PNG\r\n\x1a\n"


def test_serve_counts_successes_and_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [{"prompt": [20, 21, 22], "output_len": 4}] * 6 + [
        {"prompt": [13, 5], "output_len": 4},
        {"prompt": "FAIL", "output_len": 4},
        {"prompt": "EMPTY", "output_len": 4},
        {"prompt": "ERROR", "output_len": 4},
        {"prompt": "NOUSAGE", "output_len": 3},
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(x) for x in lines))
    out, png = tmp_path / "serve.json", tmp_path / "serve.png"
    plot = ["--plot", str(png)] if HAVE_MPL else []
    with running_server() as (url, stats):
        args = ["--base-url", url, "--dataset", str(data), "--output-json", str(out), *plot]
        rc = main(
            [
                "bench",
                "serve",
                *args,
                *"--num-prompts 11 --max-concurrency 4 --disable-tqdm".split(),
            ]
        )
    assert rc == 0 and stats.requests == 11
    doc = json.loads(out.read_text())
    f = doc["figures"]
    assert f["num_requests"] == 11 and f["completed"] == 7 and f["failed"] == 4
    assert f["total_output_tokens"] == 6 * 4 + 3  # usage, else the chunk count
    # from usage; "NOUSAGE" has neither usage nor a tokenizer to count it: 0, and a note
    assert f["total_input_tokens"] == 6 * 3
    assert any("prompt length unknown" in n for n in doc["notes"])
    assert sum(f["errors"].values()) == 4 and any("HTTP 500" in e for e in f["errors"])
    assert any("without a single completion chunk" in e for e in f["errors"])
    assert any("error event" in e for e in f["errors"])
    assert doc["kind"] == "serve" and doc["config"]["served_model"] == MODEL
    assert doc["energy"]["measured"] is False and f["energy_j_per_token"] == "not measured"
    assert len(doc["samples"]["e2e_ms"]) == 7 and len(doc["samples"]["itl_ms"]) == 6 * 3 + 2
    if HAVE_MPL:  # the 'bench' extra
        assert png.read_bytes().startswith(PNG)
    text = capsys.readouterr().out
    assert "Successful requests:" in text and "Failed requests:" in text and "P99 TPOT" in text


def test_metric_definitions_and_concurrency_cap() -> None:
    reqs = random_requests(8, 6, 5, 320, seed=1)
    with running_server(first_delay=0.05, gap=0.01) as (url, stats):
        results, duration = asyncio.run(
            run_load(
                url + "/v1/completions", MODEL, reqs, rate=200.0, max_concurrency=2, progress=False
            )
        )
    assert stats.max_in_flight <= 2 and len(results) == 8 and all(r.success for r in results)
    for r in results:
        assert r.output_len == 5 and len(r.itl_s) == 4
        # the server waits 50 ms before the first chunk; the 10 ms gaps after it are not
        # asserted: a busy machine may hand two chunks to the client in one read
        assert r.ttft_s >= 0.05 and all(x >= 0 for x in r.itl_s)
        assert r.latency_s == pytest.approx(r.ttft_s + sum(r.itl_s))
        assert r.tpot_s == pytest.approx((r.latency_s - r.ttft_s) / 4)
    f = serve_figures(results, duration)
    assert f["completed"] == 8 and f["failed"] == 0 and f["max_concurrent_requests"] <= 2
    assert f["total_output_tokens"] == 40 and f["total_input_tokens"] == 48
    assert f["output_tokens_per_s"] == pytest.approx(40 / duration)
    assert f["ttft_ms_mean"] >= 50 and f["itl_ms_mean"] >= 8.5
    tl = timeline(results, duration, buckets=10)
    assert sum(tl["output_tokens_per_s"]) * duration / 10 == pytest.approx(40)
    assert max(tl["in_flight"]) <= 2 + 1e-9


def test_length_stop_without_usage_counts_max_tokens() -> None:
    """llama_cpp.server streams no usage and may put several tokens in one chunk: a stream
    that ends with finish_reason "length" generated max_tokens tokens."""
    from membound.bench.datasets import SampleRequest

    reqs = [SampleRequest("LENGTH", 1, 6), SampleRequest("NOUSAGE", 1, 3)]
    with running_server(first_delay=0.0, gap=0.0) as (url, _):
        results, _ = asyncio.run(run_load(url + "/v1/completions", MODEL, reqs, progress=False))
    assert [r.finish_reason for r in results] == ["length", ""]
    assert [r.output_len for r in results] == [6, 3]  # max_tokens; the chunk count
    assert len(results[0].itl_s) == 3  # chunks are timed as they come: 3 token chunks + 1


def test_refused_connections_are_counted(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    opts = "--model m --num-prompts 5 --input-len 4 --output-len 2 --vocab-size 100"
    argv = ["bench", "serve", "--base-url", url, "--output-json", str(out), "--disable-tqdm"]
    rc = main([*argv, *opts.split()])
    f = json.loads(out.read_text())["figures"]
    assert rc == 0 and f["num_requests"] == 5 and f["failed"] == 5 and f["completed"] == 0
    assert f["ttft_ms_mean"] is None and f["requests_per_s"] == 0


def test_bad_rate_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "serve", "--request-rate", "-1"])
    assert "positive rate" in capsys.readouterr().err
