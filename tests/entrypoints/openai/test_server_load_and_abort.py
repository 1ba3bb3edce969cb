"""Aborts free KV blocks at once; 100 concurrent streams; a dead engine loop; a full queue;
metrics."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai_server_harness import API_KEY, MODEL, LiveServer, read_metrics, start_server, wait_for

from membound.entrypoints.openai.limits import ServerLimits

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _idle(http: httpx.Client) -> bool:
    m = read_metrics(http)
    return (m["vllm:kv_cache_usage_perc"] == 0 and m["vllm:num_requests_running"] == 0
            and m["vllm:num_requests_waiting"] == 0)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_client_closing_a_stream_aborts_and_frees_kv(http: httpx.Client, path: str) -> None:
    assert wait_for(lambda: _idle(http))
    aborted_before = read_metrics(http).get(
        f'vllm:request_success_total{{finished_reason="abort",model_name="{MODEL}"}}', 0.0)
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "ignore_eos": True, "stream": True}
    if "chat" in path:
        body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        body["prompt"] = "import os"
    with http.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: {") for line in got)
        assert read_metrics(http)["membound:kv_cache_used_blocks"] > 0  # still generating
    # the response is closed mid-stream: the request is aborted and its blocks freed
    assert wait_for(lambda: _idle(http), timeout=10)
    key = f'vllm:request_success_total{{finished_reason="abort",model_name="{MODEL}"}}'
    assert read_metrics(http)[key] == aborted_before + 1


def test_client_gone_during_a_non_streaming_request_aborts_it(
    server: LiveServer, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = server.state.engine.engine
    real_step = engine.step

    def slow_step() -> Any:
        time.sleep(0.02)
        return real_step()

    monkeypatch.setattr(engine, "step", slow_step)
    assert wait_for(lambda: _idle(http))
    key = f'vllm:request_success_total{{finished_reason="abort",model_name="{MODEL}"}}'
    aborted_before = read_metrics(http).get(key, 0.0)
    body = {"model": MODEL, "prompt": "x", "max_tokens": 100, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/completions", json=body, timeout=0.3)
    assert wait_for(lambda: _idle(http), timeout=10)
    assert read_metrics(http)[key] == aborted_before + 1


async def _one_stream(client: httpx.AsyncClient, i: int) -> tuple[int, str]:
    body = {"model": MODEL, "prompt": f"request {i}", "max_tokens": 8, "ignore_eos": True,
            "stream": True, "logprobs": 0, "stream_options": {"include_usage": True}}
    tokens, usage, done = 0, None, False
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            chunk = json.loads(line[6:])
            for choice in chunk["choices"]:
                tokens += len((choice.get("logprobs") or {}).get("tokens", []))
            usage = chunk.get("usage") or usage
    assert done and usage is not None
    return tokens, usage["completion_tokens"]


def test_100_concurrent_streams_complete_with_the_right_lengths(
    server: LiveServer, http: httpx.Client
) -> None:
    async def run() -> list[tuple[int, str]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120,
                                     limits=limits) as client:
            return await asyncio.gather(*(_one_stream(client, i) for i in range(100)))

    results = asyncio.run(run())
    assert results == [(8, 8)] * 100
    assert wait_for(lambda: _idle(http))


def test_metrics_names_and_histograms(http: httpx.Client) -> None:
    http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 3,
                                       "ignore_eos": True})
    m = read_metrics(http)
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc",
                 "num_preemptions_total", "prompt_tokens_total",
                 "generation_tokens_total", "time_to_first_token_seconds_count",
                 "inter_token_latency_seconds_count", "e2e_request_latency_seconds_count",
                 "request_queue_time_seconds_count", "request_success_total",
                 "prefix_cache_queries_total", "prefix_cache_hits_total"):
        assert f"vllm:{name}" in m, name
    for name in ("prefix_cache_hit_rate", "kv_cache_used_blocks", "num_swaps_out_total"):
        assert f"membound:{name}" in m, name
    assert m["vllm:generation_tokens_total"] >= 3
    assert m["vllm:e2e_request_latency_seconds_count"] >= 1
    assert m["vllm:inter_token_latency_seconds_count"] >= 2


def test_dead_engine_loop_fails_requests_and_health(tiny_llama: Path) -> None:
    live = start_server(tiny_llama, api_key=None)
    try:
        engine = live.state.engine.engine
        real_step, calls = engine.step, []

        def failing_step() -> Any:
            calls.append(1)
            if len(calls) > 2:
                raise RuntimeError("simulated device failure")
            return real_step()

        engine.step = failing_step
        with httpx.Client(base_url=live.url, timeout=30) as http:
            assert http.get("/health").status_code == 200
            r = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 50,
                                                   "ignore_eos": True})
            assert r.status_code == 503 and "engine loop died" in r.json()["error"]["message"]
            assert "Traceback" not in r.text and "simulated" not in r.text
            assert http.get("/health").status_code == 503
            again = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
            assert again.status_code == 503
    finally:
        live.stop()


def test_full_waiting_queue_is_503_with_retry_after(tiny_llama: Path) -> None:
    live = start_server(tiny_llama, api_key=None, limits=ServerLimits(max_waiting_requests=0))
    try:
        with httpx.Client(base_url=live.url, timeout=30) as http:
            r = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "server_overloaded"
            assert http.get("/v1/models").status_code == 200  # no key needed without --api-key
    finally:
        live.stop()
