"""vLLM-compatible surface with the official openai client: metric names and meanings,
GET /v1/models/{id}, GET /version, strict request fields."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai_server_harness import API_KEY, MODEL, LiveServer, read_metrics

openai = pytest.importorskip("openai")


@pytest.fixture()
def client(server: LiveServer) -> Iterator[Any]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0) as c:
        yield c


def _success(http: httpx.Client, reason: str) -> float:
    key = f'vllm:request_success_total{{finished_reason="{reason}",model_name="{MODEL}"}}'
    return read_metrics(http).get(key, 0.0)


def test_request_success_counts_requests_not_choices(client: Any, http: httpx.Client) -> None:
    before = _success(http, "length")
    tokens_before = read_metrics(http).get("vllm:generation_tokens_total", 0.0)
    client.completions.create(
        model=MODEL,
        prompt="abc",
        n=3,
        max_tokens=2,
        temperature=1.0,
        extra_body={"ignore_eos": True},
    )
    assert _success(http, "length") == before + 1
    assert read_metrics(http)["vllm:generation_tokens_total"] == tokens_before + 6


def test_metric_types_and_labels(http: httpx.Client) -> None:
    text = http.get("/metrics").text
    assert "# TYPE vllm:num_requests_running gauge" in text
    assert "# TYPE vllm:kv_cache_usage_perc gauge" in text
    assert "# TYPE vllm:prompt_tokens_total counter" in text
    assert "# TYPE vllm:prefix_cache_hits_total counter" in text
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in text
    assert f'vllm:num_preemptions_total{{model_name="{MODEL}"}}' in text
    assert "membound:num_requests_running" not in text  # one name per figure


def test_model_by_id_and_version(client: Any, http: httpx.Client) -> None:
    card = client.models.retrieve(MODEL)
    assert card.id == MODEL and card.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    r = http.get("/version")
    assert r.status_code == 200 and isinstance(r.json()["version"], str)


def test_unknown_and_unsupported_fields_are_refused(client: Any) -> None:
    with pytest.raises(
        openai.BadRequestError, match="Unrecognized request argument supplied: top_kk"
    ):
        client.completions.create(model=MODEL, prompt="a", max_tokens=1, extra_body={"top_kk": 3})
    with pytest.raises(openai.BadRequestError, match="reasoning_effort is not supported"):
        client.chat.completions.create(
            model=MODEL,
            max_tokens=1,
            reasoning_effort="low",
            messages=[{"role": "user", "content": "x"}],
        )
    with pytest.raises(openai.BadRequestError, match="best_of=2 is not supported"):
        client.completions.create(model=MODEL, prompt="a", max_tokens=1, best_of=2)
