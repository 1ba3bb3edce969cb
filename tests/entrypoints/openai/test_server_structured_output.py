"""Structured outputs through the official openai client: response_format (json_schema strict
or not, json_object), vLLM's guided_* and structured_outputs, on chat and completions,
streaming included; every reply parses and validates, at any temperature, from a random
model. Plus logit_bias, allowed_token_ids and bad_words."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from openai_server_harness import API_KEY, MODEL, LiveServer

openai = pytest.importorskip("openai")
pytest.importorskip("xgrammar")
jsonschema = pytest.importorskip("jsonschema")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog", None]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    },
    "required": ["name", "age", "pet", "tags"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]


@pytest.fixture()
def client(server: LiveServer) -> Iterator[Any]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0) as c:
        yield c


def _schema_format(strict: bool) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": strict},
    }


@pytest.mark.parametrize("temperature", [0.0, 1.0, 1.8])
@pytest.mark.parametrize("strict", [True, False])
def test_chat_json_schema_validates(client: Any, temperature: float, strict: bool) -> None:
    out = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=80,
        temperature=temperature,
        seed=3,
        n=2,
        response_format=_schema_format(strict),
    )
    for choice in out.choices:
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_chat_json_schema_stream(client: Any) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=80,
        temperature=1.0,
        seed=5,
        stream=True,
        response_format=_schema_format(True),
    )
    text, reasons = "", []
    for chunk in stream:
        for ch in chunk.choices:
            text += ch.delta.content or ""
            reasons.append(ch.finish_reason)
    assert reasons[-1] == "stop"
    jsonschema.validate(json.loads(text), PERSON)


def test_completions_json_schema_and_stream(client: Any) -> None:
    fmt = {"response_format": _schema_format(False)}
    full = client.completions.create(
        model=MODEL, prompt="person:", max_tokens=80, temperature=0, extra_body=fmt
    )
    jsonschema.validate(json.loads(full.choices[0].text), PERSON)
    stream = client.completions.create(
        model=MODEL, prompt="person:", max_tokens=80, temperature=0, stream=True, extra_body=fmt
    )
    assert "".join(c.choices[0].text for c in stream if c.choices) == full.choices[0].text


def test_json_object_and_length(client: Any) -> None:
    """json_object yields a JSON object; cut by max_tokens it says so with 'length'."""
    out = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=80,
        temperature=1.0,
        seed=1,
        response_format={"type": "json_object"},
    )
    assert out.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(out.choices[0].message.content), dict)
    cut = client.completions.create(
        model=MODEL,
        prompt="x",
        max_tokens=2,
        temperature=0,
        extra_body={"response_format": {"type": "json_object"}},
    )
    assert cut.choices[0].finish_reason == "length"
    assert cut.choices[0].text.startswith("{")


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        ({"guided_regex": r"[a-z]{2,4}-\d{3}"}, r"[a-z]{2,4}-\d{3}"),
        ({"guided_choice": ["red", "green", "blue"]}, r"red|green|blue"),
        (
            {"guided_grammar": 'root ::= "(" num ("+" num)? ")"\nnum ::= [0-9] [0-9]? [0-9]?'},
            r"\(\d{1,3}(\+\d{1,3})?\)",
        ),
        ({"structured_outputs": {"regex": r"(yes|no)!"}}, r"(yes|no)!"),
        ({"structured_outputs": {"choice": ["up", "down"]}}, r"up|down"),
    ],
)
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_guided_fields(client: Any, extra: dict[str, Any], check: str, endpoint: str) -> None:
    import re

    for temperature in (0.0, 1.5):
        if endpoint == "chat":
            out = client.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                max_tokens=40,
                temperature=temperature,
                extra_body=extra,
            )
            text = out.choices[0].message.content
        else:
            out = client.completions.create(
                model=MODEL, prompt="a", max_tokens=40, temperature=temperature, extra_body=extra
            )
            text = out.choices[0].text
        assert out.choices[0].finish_reason == "stop"
        assert re.fullmatch(check, text), text


def test_guided_json(client: Any) -> None:
    # seeded (unseeded, it drew from the server's shared generator, whose state depends on
    # the requests before it) and with room for the object to close: a name of 6 characters
    # outside the BMP takes byte-level tokens by the dozen; 80 once ran out before the "}"
    # (the test model holds 128 tokens)
    out = client.completions.create(
        model=MODEL, prompt="p", max_tokens=120, temperature=1.2, seed=11,
        extra_body={"guided_json": PERSON},
    )
    assert out.choices[0].finish_reason == "stop", out.choices[0]
    jsonschema.validate(json.loads(out.choices[0].text), PERSON)


def test_bad_schema_is_a_400(client: Any) -> None:
    with pytest.raises(openai.BadRequestError, match="could not be compiled"):
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=5,
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "x",
                    "schema": {"type": "object", "properties": {"a": {"$ref": "#/nope"}}},
                },
            },
        )


def test_logit_bias_allowed_token_ids_bad_words(client: Any, server: LiveServer) -> None:
    tok = server.state.tokenizer
    target = tok.encode("e", add_special_tokens=False)[0]
    out = client.completions.create(
        model=MODEL,
        prompt="hello",
        max_tokens=5,
        temperature=0,
        logit_bias={str(target): 100},
        extra_body={"ignore_eos": True},
    )
    assert out.choices[0].text == "e" * 5
    allowed = tok.encode("ab", add_special_tokens=False)
    out = client.completions.create(
        model=MODEL,
        prompt="hello",
        max_tokens=8,
        temperature=1.0,
        extra_body={"allowed_token_ids": allowed, "ignore_eos": True},
    )
    assert set(out.choices[0].text) <= {"a", "b"} and out.choices[0].text
    biased = {"ignore_eos": True, "logit_bias": {str(target): 5}}
    base = client.completions.create(
        model=MODEL, prompt="hello", max_tokens=6, temperature=0, logprobs=0, extra_body=biased
    )
    assert "e" in base.choices[0].logprobs.tokens
    banned = client.completions.create(
        model=MODEL,
        prompt="hello",
        max_tokens=6,
        temperature=0,
        logprobs=0,
        extra_body={**biased, "bad_words": ["e"]},
    )
    assert "e" not in banned.choices[0].logprobs.tokens
