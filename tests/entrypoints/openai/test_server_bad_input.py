"""Table-driven bad input: each case gets the right 4xx in OpenAI's error shape, and the server
keeps serving afterwards."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from openai_server_harness import API_KEY, MAX_MODEL_LEN, MODEL, LiveServer

CMPL = "/v1/completions"
CHAT = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "hi"}]


def cmpl(**fields: Any) -> dict[str, Any]:
    return {"json": {"model": MODEL, "prompt": "hello", "max_tokens": 2, **fields}}


def chat(**fields: Any) -> dict[str, Any]:
    return {"json": {"model": MODEL, "messages": MSGS, "max_tokens": 2, **fields}}


def raw(body: bytes) -> dict[str, Any]:
    return {"content": body, "headers": {"Content-Type": "application/json"}}


# (case id, method, path, request kwargs, status, expected param or None, text in message)
CASES: list[tuple[str, str, str, dict[str, Any], int, str | None, str]] = [
    ("malformed json", "POST", CMPL, raw(b'{"model": "tiny", "prompt": '), 400, None, "JSON"),
    ("json not an object", "POST", CMPL, raw(b"[1, 2, 3]"), 400, None, "JSON object"),
    ("deeply nested json", "POST", CMPL, raw(b"[" * 100_000), 400, None, "JSON"),
    ("invalid utf-8", "POST", CMPL, raw(b'{"prompt": "\xff\xfe\xfa"}'), 400, None, "UTF-8"),
    ("lone surrogate", "POST", CMPL, raw(b'{"prompt": "a\\ud800b", "max_tokens": 2}'), 400,
     None, "surrogate"),
    ("prompt wrong type", "POST", CMPL, cmpl(prompt=123), 400, "prompt", "prompt must be"),
    ("temperature wrong type", "POST", CMPL, cmpl(temperature="hot"), 400, "temperature", ""),
    ("n wrong type", "POST", CMPL, cmpl(n="many"), 400, "n", ""),
    ("messages wrong type", "POST", CHAT, chat(messages="hi"), 400, "messages", ""),
    ("stop wrong type", "POST", CMPL, cmpl(stop=[1, 2]), 400, "stop", ""),
    ("nan temperature", "POST", CMPL,
     raw(b'{"prompt": "x", "max_tokens": 2, "temperature": NaN}'), 400, "temperature", ">= 0"),
    ("infinite temperature", "POST", CMPL,
     raw(b'{"prompt": "x", "max_tokens": 2, "temperature": 1e999}'), 400, "temperature", ""),
    ("huge int temperature", "POST", CMPL, cmpl(temperature=10**400), 400, "temperature", ""),
    ("negative temperature", "POST", CMPL, cmpl(temperature=-1), 400, "temperature", ">= 0"),
    ("top_p above 1", "POST", CMPL, cmpl(top_p=1.5), 400, "top_p", "(0, 1]"),
    ("presence penalty out of range", "POST", CHAT, chat(presence_penalty=5), 400,
     "presence_penalty", "[-2, 2]"),
    ("max_tokens 0", "POST", CMPL, cmpl(max_tokens=0), 400, "max_tokens", ">= 1"),
    ("max_tokens negative", "POST", CMPL, cmpl(max_tokens=-5), 400, "max_tokens", ">= 1"),
    ("max_tokens 1e12", "POST", CMPL, cmpl(max_tokens=10**12), 400, "max_tokens",
     f"maximum context length is {MAX_MODEL_LEN} tokens"),
    ("max_completion_tokens 1e12", "POST", CHAT, chat(max_completion_tokens=10**12), 400,
     "max_completion_tokens", "maximum context length"),
    ("n 1e9", "POST", CMPL, cmpl(n=10**9), 400, "n", "between 1 and 16"),
    ("n 0", "POST", CMPL, cmpl(n=0), 400, "n", ">= 1"),
    ("logprobs 1e6", "POST", CMPL, cmpl(logprobs=10**6), 400, "logprobs", "between 0 and 20"),
    ("top_logprobs 1e6", "POST", CHAT, chat(logprobs=True, top_logprobs=10**6), 400,
     "top_logprobs", "between 0 and 20"),
    ("top_logprobs without logprobs", "POST", CHAT, chat(top_logprobs=2), 400, "top_logprobs", ""),
    ("empty prompt", "POST", CMPL, cmpl(prompt=""), 400, "prompt", "empty"),
    ("empty prompt list", "POST", CMPL, cmpl(prompt=[]), 400, "prompt", "empty"),
    ("empty messages", "POST", CHAT, chat(messages=[]), 400, "messages", "empty"),
    ("message without role", "POST", CHAT, chat(messages=[{"content": "x"}]), 400, "messages",
     "role"),
    ("image content part", "POST", CHAT,
     chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]),
     400, "messages", "text"),
    ("out-of-vocab token ids", "POST", CMPL, cmpl(prompt=[1, 2, 10**9]), 400, "prompt", "[0, "),
    ("negative token id", "POST", CMPL, cmpl(prompt=[[5, -1]]), 400, "prompt", "[0, "),
    ("bool token id", "POST", CMPL, cmpl(prompt=[True, 5]), 400, "prompt", ""),
    ("stop token id out of vocab", "POST", CMPL, cmpl(stop_token_ids=[10**6]), 400,
     "stop_token_ids", ""),
    ("seed too big", "POST", CMPL, cmpl(seed=10**30), 400, "seed", ""),
    ("prompt too long", "POST", CMPL, cmpl(prompt=[5] * (MAX_MODEL_LEN + 1)), 400, "prompt",
     f"maximum context length is {MAX_MODEL_LEN} tokens"),
    ("too many prompts", "POST", CMPL, cmpl(prompt=["a"] * 1000), 400, "prompt", "at most 64 prompts"),
    ("1e5 stop strings", "POST", CMPL, cmpl(stop=[f"s{i}" for i in range(10**5)]), 400, "stop",
     "at most 16 stop strings"),
    ("empty stop string", "POST", CMPL, cmpl(stop=[""]), 400, "stop", "non-empty"),
    ("suffix", "POST", CMPL, cmpl(suffix="x"), 400, "suffix", "not supported"),
    # strict requests: unknown fields and known-but-unsupported ones are refused by name
    ("unknown field", "POST", CMPL, cmpl(temprature=0.5), 400, "temprature",
     "Unrecognized request argument supplied: temprature"),
    ("unknown field chat", "POST", CHAT, chat(foo=1), 400, "foo", "Unrecognized"),
    ("unknown nested field", "POST", CHAT, chat(stream_options={"include_usage": True,
                                                                "x": 1}),
     400, "stream_options.x", "Unrecognized"),
    ("unsupported field", "POST", CHAT, chat(audio={"voice": "x"}), 400, "audio",
     "not supported"),
    ("unsupported field store", "POST", CMPL, cmpl(store=True), 400, "store", "not supported"),
    ("best_of above n", "POST", CMPL, cmpl(best_of=3), 400, "best_of", "best_of"),
    ("text/plain body", "POST", CMPL,
     {"content": json.dumps(cmpl()["json"]).encode(), "headers": {"Content-Type": "text/plain"}},
     415, None, "application/json"),
    ("form body", "POST", CHAT, {"data": {"model": MODEL}}, 415, None, "application/json"),
    ("no content type", "POST", CMPL, {"content": json.dumps(cmpl()["json"]).encode()}, 415,
     None, "application/json"),
    # structured outputs and tools
    ("uncompilable regex", "POST", CMPL, cmpl(guided_regex="(unclosed"), 400, "regex",
     "could not be compiled"),
    ("bad json schema", "POST", CHAT,
     chat(response_format={"type": "json_schema",
                           "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}),
     400, "json", "JSON schema"),
    ("bad grammar", "POST", CMPL, cmpl(guided_grammar="root ::= undefined_rule"), 400,
     "grammar", "could not be compiled"),
    ("two constraints", "POST", CMPL, cmpl(guided_regex="a", guided_choice=["a"]), 400, None,
     "one way"),
    ("json_schema without schema", "POST", CHAT,
     chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), 400,
     "response_format.json_schema.schema", ""),
    ("unknown guided backend", "POST", CMPL, cmpl(guided_regex="a",
                                                  guided_decoding_backend="outlines"),
     400, "guided_decoding_backend", "xgrammar"),
    ("min_tokens with grammar", "POST", CMPL, cmpl(guided_regex="a+", min_tokens=2), 400,
     "min_tokens", "structured"),
    ("logit_bias bad key", "POST", CMPL, cmpl(logit_bias={"abc": 1}), 400, "logit_bias", ""),
    ("logit_bias out of range", "POST", CMPL, cmpl(logit_bias={"5": 1000}), 400, "logit_bias",
     "[-100, 100]"),
    ("logit_bias out of vocab", "POST", CMPL, cmpl(logit_bias={"1000000": 1}), 400,
     "logit_bias", "[0, "),
    ("allowed_token_ids out of vocab", "POST", CMPL, cmpl(allowed_token_ids=[10**6]), 400,
     "allowed_token_ids", ""),
    ("tool_choice without tools", "POST", CHAT, chat(tool_choice="required"), 400,
     "tool_choice", "needs tools"),
    ("tool_choice unknown function", "POST", CHAT,
     chat(tools=[{"type": "function", "function": {"name": "f"}}],
          tool_choice={"type": "function", "function": {"name": "g"}}), 400, "tool_choice",
     "'g'"),
    ("auto tools without a parser", "POST", CHAT,
     chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tool_choice",
     "--tool-call-parser"),
    ("tool call arguments not json", "POST", CHAT,
     chat(messages=[{"role": "user", "content": "x"},
                    {"role": "assistant", "content": None, "tool_calls": [
                        {"id": "1", "type": "function",
                         "function": {"name": "f", "arguments": "{nope"}}]}]),
     400, "messages", "arguments"),
    ("oversized body", "POST", CMPL, {"content": b"x" * (9 * 1024 * 1024)}, 413, None,
     "too large"),
    ("oversized chunked body", "POST", CMPL, {"content": [b"x" * 1024 * 1024] * 9}, 413, None,
     "too large"),
    ("unknown model", "POST", CMPL, cmpl(model="gpt-4"), 404, "model", "does not exist"),
    ("unknown model chat", "POST", CHAT, chat(model="gpt-4"), 404, "model", "does not exist"),
    ("detokenize bad ids", "POST", "/detokenize", {"json": {"tokens": [10**9]}}, 400, "tokens",
     ""),
    ("tokenize nothing", "POST", "/tokenize", {"json": {}}, 400, "prompt", "exactly one"),
    ("unknown route", "GET", "/v1/nothing", {}, 404, None, ""),
    ("wrong method", "GET", CMPL, {}, 405, None, ""),
]


def _check_shape(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in r.text
    return err


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "param", "text"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_the_right_4xx(
    http: httpx.Client, method: str, path: str, kwargs: dict[str, Any], status: int,
    param: str | None, text: str,
) -> None:
    r = http.request(method, path, **kwargs)
    assert r.status_code == status, r.text[:500]
    err = _check_shape(r)
    if param is not None:
        assert err["param"] == param, err
    assert text in err["message"], err
    assert len(r.content) < 2000  # errors never echo the (possibly huge) input


@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Basic {API_KEY}", "Bearer", f"Bearer {API_KEY}x"])
@pytest.mark.parametrize("path", ["/v1/models", "/metrics", CMPL])
def test_missing_or_wrong_key_is_401_everywhere_but_health(
    server: LiveServer, auth: str | None, path: str
) -> None:
    headers = {"Authorization": auth} if auth is not None else {}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        method = "POST" if path == CMPL else "GET"
        r = client.request(method, path, headers=headers, json=cmpl()["json"])
        assert r.status_code == 401
        assert _check_shape(r)["code"] == "invalid_api_key"
        assert client.get("/health").status_code == 200


def test_a_500_carries_no_traceback(server: LiveServer, http: httpx.Client,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> bytes:
        raise RuntimeError("secret internals /path/to/file.py")

    monkeypatch.setattr(server.state.metrics, "render", broken)
    r = http.get("/metrics")
    assert r.status_code == 500
    err = _check_shape(r)
    assert "secret" not in r.text and err["type"] == "internal_server_error"


def test_still_serving_after_bad_input(http: httpx.Client) -> None:
    for case in CASES:
        http.request(case[1], case[2], **case[3])
    assert http.get("/health").status_code == 200
    r = http.post(CMPL, json={"model": MODEL, "prompt": "import os", "max_tokens": 3,
                              "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    c = http.post(CHAT, json={"model": MODEL, "messages": MSGS, "max_tokens": 2,
                              "ignore_eos": True, "stream": True})
    lines = [line for line in c.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and all("error" not in json.loads(x[6:])
                                                for x in lines[:-1])


EDGE_OK: list[tuple[str, str, dict[str, Any]]] = [
    ("negative seed, n=2", CMPL, cmpl(seed=-5, n=2, temperature=1.0)),
    ("largest seed, n=3", CMPL, cmpl(seed=2**63 - 1, n=3, temperature=1.0)),
    ("huge top_k", CMPL, cmpl(top_k=10**30, temperature=1.0)),
    ("top_k -1", CMPL, cmpl(top_k=-1, temperature=0.5)),
    ("huge repetition penalty", CMPL, cmpl(repetition_penalty=1e300)),
    ("all penalties", CHAT, chat(presence_penalty=2, frequency_penalty=-2, repetition_penalty=1.3)),
    ("min_p and top_p", CMPL, cmpl(min_p=1.0, top_p=1e-9, temperature=2.0)),
    ("prompt list of token lists", CMPL, cmpl(prompt=[[5, 6], [7]], logprobs=0, echo=True)),
    ("stop token id", CMPL, cmpl(stop_token_ids=[2, 3], ignore_eos=True)),
    ("n=16 streaming chat", CHAT, chat(n=16, stream=True, temperature=1.0)),
    ("max_tokens null", CHAT, chat(max_tokens=None, ignore_eos=False, max_completion_tokens=2)),
    ("best_of equal to n, logit_bias", CMPL, cmpl(best_of=1, logit_bias={"5": 1})),
    ("json with charset", CMPL, {"content": json.dumps(cmpl()["json"]).encode(),
                                 "headers": {"Content-Type": "application/json; charset=utf-8"}}),
    ("unicode prompt", CMPL, cmpl(prompt="héllo wörld — naïve café 😀 中文")),
    ("content parts", CHAT, chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])),
]


@pytest.mark.parametrize(("path", "kwargs"), [c[1:] for c in EDGE_OK], ids=[c[0] for c in EDGE_OK])
def test_edge_values_are_served(http: httpx.Client, path: str, kwargs: dict[str, Any]) -> None:
    r = http.post(path, **kwargs)
    assert r.status_code == 200, r.text[:500]
    if kwargs.get("json", {}).get("stream"):
        assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text
    else:
        assert r.json()["usage"]["completion_tokens"] >= 1
