"""The official openai client against a live server: completions and chat, streaming and not,
stop, n > 1, logprobs, echo, usage, models, tokenize."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from openai_server_harness import API_KEY, MAX_MODEL_LEN, MODEL, LiveServer

openai = pytest.importorskip("openai")

GREEDY: dict[str, Any] = {"temperature": 0, "extra_body": {"ignore_eos": True}}
MESSAGES = [{"role": "user", "content": "def add(a, b):"}]


@pytest.fixture()
def client(server: LiveServer) -> Iterator[Any]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0) as c:
        yield c


def _stream_text(chunks: Any) -> tuple[dict[int, str], dict[int, str | None], Any]:
    texts: dict[int, str] = {}
    reasons: dict[int, str | None] = {}
    usage = None
    for chunk in chunks:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            piece = ch.text if hasattr(ch, "text") else (ch.delta.content or "")
            texts[ch.index] = texts.get(ch.index, "") + piece
            if ch.finish_reason is not None:
                reasons[ch.index] = ch.finish_reason
    return texts, reasons, usage


def test_completion_and_stream_agree(client: Any) -> None:
    full = client.completions.create(model=MODEL, prompt="def add(a, b):", max_tokens=6, **GREEDY)
    assert full.object == "text_completion" and full.model == MODEL
    (choice,) = full.choices
    assert choice.finish_reason == "length"
    assert full.usage.completion_tokens == 6
    assert full.usage.total_tokens == full.usage.prompt_tokens + 6
    stream = client.completions.create(model=MODEL, prompt="def add(a, b):", max_tokens=6,
                                       stream=True, stream_options={"include_usage": True},
                                       **GREEDY)
    texts, reasons, usage = _stream_text(stream)
    assert texts == {0: choice.text} and reasons == {0: "length"}
    assert usage.completion_tokens == 6 and usage.prompt_tokens == full.usage.prompt_tokens


def test_chat_and_stream_agree(client: Any) -> None:
    full = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, **GREEDY)
    assert full.object == "chat.completion"
    msg = full.choices[0].message
    assert msg.role == "assistant" and full.usage.completion_tokens == 5
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=5, stream=True,
        stream_options={"include_usage": True}, **GREEDY,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    texts, reasons, usage = _stream_text(chunks)
    assert texts == {0: msg.content} and reasons == {0: "length"}
    assert usage.completion_tokens == 5 and usage.prompt_tokens == full.usage.prompt_tokens


def test_stop_string_cuts_output_streaming_or_not(client: Any) -> None:
    base = client.completions.create(model=MODEL, prompt="import os", max_tokens=12, **GREEDY)
    text = base.choices[0].text
    stop = next((text[i:i + 2] for i in range(1, len(text) - 1)
                 if text[i:i + 2].strip() and text.find(text[i:i + 2]) == i), None)
    if stop is None:
        pytest.skip(f"greedy text {text!r} has no usable stop string")
    want = text[:text.index(stop)]
    cut = client.completions.create(model=MODEL, prompt="import os", max_tokens=12, stop=[stop],
                                    **GREEDY)
    assert cut.choices[0].text == want and cut.choices[0].finish_reason == "stop"
    stream = client.completions.create(model=MODEL, prompt="import os", max_tokens=12,
                                       stop=stop, stream=True, **GREEDY)
    texts, reasons, _ = _stream_text(stream)
    assert texts == {0: want} and reasons == {0: "stop"}


def test_n_and_several_prompts(client: Any) -> None:
    out = client.completions.create(model=MODEL, prompt=["import os", "class Foo:"], n=2,
                                    max_tokens=4, temperature=1.0, seed=3,
                                    extra_body={"ignore_eos": True})
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    assert out.usage.completion_tokens == 16
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=3, max_tokens=3,
                                            temperature=1.0, seed=5, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    texts, reasons, usage = _stream_text(stream)
    assert sorted(reasons) == [0, 1, 2] and set(reasons.values()) == {"length"}
    assert usage.completion_tokens == 9


def test_completion_logprobs_and_echo(client: Any) -> None:
    out = client.completions.create(model=MODEL, prompt="import os", max_tokens=4, logprobs=2,
                                    **GREEDY)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(1 <= len(top) <= 2 for top in lp.top_logprobs)
    # greedy: the chosen token is the most likely one
    assert all(abs(max(top.values()) - v) < 1e-5 for top, v in zip(lp.top_logprobs,
                                                                    lp.token_logprobs, strict=True))
    echo = client.completions.create(model=MODEL, prompt="import os", max_tokens=2, logprobs=1,
                                     echo=True, **GREEDY)
    c = echo.choices[0]
    assert c.text.startswith("import os")
    n_prompt = echo.usage.prompt_tokens
    assert len(c.logprobs.tokens) == n_prompt + 2 and c.logprobs.token_logprobs[0] is None
    assert all(v is not None for v in c.logprobs.token_logprobs[1:])


def test_chat_logprobs_streaming_or_not(client: Any) -> None:
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3,
                                         logprobs=True, top_logprobs=3, **GREEDY)
    content = out.choices[0].logprobs.content
    assert len(content) == 3 and all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.bytes == list(t.token.encode()) for t in content)
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3,
                                            logprobs=True, stream=True, **GREEDY)
    got = [t for ch in stream for c in ch.choices if c.logprobs for t in c.logprobs.content]
    assert [t.token for t in got] == [t.token for t in content]
    assert [t.logprob for t in got] == pytest.approx([t.logprob for t in content], abs=1e-5)


def test_token_id_prompt_and_tokenize_roundtrip(client: Any, http: Any) -> None:
    ids = http.post("/tokenize", json={"prompt": "def add(a, b):"}).json()
    assert ids["count"] == len(ids["tokens"]) and ids["max_model_len"] == MAX_MODEL_LEN
    text = http.post("/detokenize", json={"tokens": ids["tokens"]}).json()["prompt"]
    assert text == "def add(a, b):"
    by_ids = client.completions.create(model=MODEL, prompt=ids["tokens"], max_tokens=4, **GREEDY)
    by_text = client.completions.create(model=MODEL, prompt="def add(a, b):", max_tokens=4,
                                        **GREEDY)
    assert by_ids.choices[0].text == by_text.choices[0].text
    chat_ids = http.post("/tokenize", json={"messages": MESSAGES}).json()
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1, **GREEDY)
    assert chat_ids["count"] == chat.usage.prompt_tokens


def test_models_and_errors_through_the_client(client: Any, server: LiveServer) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match=f"maximum context length is {MAX_MODEL_LEN}"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=10**6)
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
