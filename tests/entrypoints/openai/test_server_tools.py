"""Tool calling through the official openai client: forced calls (named, required) whose
arguments validate against the function's parameters, auto calls read by the hermes parser,
OpenAI-shaped responses and stream deltas, and tool history in the conversation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai_server_harness import API_KEY, MODEL, LiveServer, start_server

openai = pytest.importorskip("openai")
pytest.importorskip("xgrammar")
jsonschema = pytest.importorskip("jsonschema")

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Forecast", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def hermes_server(tiny_llama: Path) -> Iterator[LiveServer]:
    live = start_server(tiny_llama, tool_call_parser="hermes", max_model_len=256)
    yield live
    live.stop()


@pytest.fixture()
def client(hermes_server: LiveServer) -> Iterator[Any]:
    with openai.OpenAI(base_url=f"{hermes_server.url}/v1", api_key=API_KEY, max_retries=0) as c:
        yield c


def _check_calls(calls: Any) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("temperature", [0.0, 1.0, 1.8])
def test_named_tool_choice(client: Any, temperature: float) -> None:
    out = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        temperature=temperature,
        seed=2,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60,
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    _check_calls([call])


@pytest.mark.parametrize("temperature", [0.0, 1.5])
def test_required_tool_choice(client: Any, temperature: float) -> None:
    out = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="required",
        temperature=temperature,
        seed=4,
        max_tokens=100,
        parallel_tool_calls=False,
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    _check_calls(choice.message.tool_calls)


def test_forced_call_stream_deltas(client: Any) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        stream=True,
        max_tokens=60,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls: dict[int, dict[str, str]] = {}
    reasons = []
    for chunk in stream:
        for ch in chunk.choices:
            reasons.append(ch.finish_reason)
            assert not ch.delta.content  # a forced call streams no content
            for d in ch.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += d.id or ""
                entry["name"] += (d.function.name or "") if d.function else ""
                entry["arguments"] += (d.function.arguments or "") if d.function else ""
    assert reasons[-1] == "tool_calls"
    assert list(calls) == [0] and calls[0]["name"] == "get_time" and calls[0]["id"]
    jsonschema.validate(json.loads(calls[0]["arguments"]), TIME)


HERMES_CALL = (
    'Checking.<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", '
    '"days": 2}}</tool_call>'
)


def _literal_regex(text: str) -> str:
    import re

    return re.escape(text)


def test_auto_tool_choice_hermes(client: Any) -> None:
    """The model's own <tool_call> format, read by the hermes parser (a regex makes the random
    model write it)."""
    extra = {"guided_regex": _literal_regex(HERMES_CALL)}
    out = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=100, extra_body=extra
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo", "days": 2}
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=100, stream=True, extra_body=extra
    )
    content, args, reasons = "", "", []
    for chunk in stream:
        for ch in chunk.choices:
            content += ch.delta.content or ""
            args += "".join(d.function.arguments or "" for d in ch.delta.tool_calls or [])
            reasons.append(ch.finish_reason)
    assert content == "Checking." and json.loads(args) == {"city": "Oslo", "days": 2}
    assert reasons[-1] == "tool_calls"


def test_auto_without_a_call_is_content(client: Any) -> None:
    out = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        max_tokens=8,
        extra_body={"guided_regex": "plain"},
    )
    assert out.choices[0].message.content == "plain"
    assert not out.choices[0].message.tool_calls
    assert out.choices[0].finish_reason == "stop"


def test_tool_history_is_accepted(client: Any, hermes_server: LiveServer) -> None:
    history = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "days": 1}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    out = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, tool_choice="none", max_tokens=4, temperature=0
    )
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 0


def test_tool_choice_none_returns_content(client: Any) -> None:
    out = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="none",
        max_tokens=4,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert out.choices[0].message.tool_calls is None
    assert out.choices[0].finish_reason == "length"


def test_auto_parallel_tool_calls_false_keeps_one(client: Any) -> None:
    two = ('<tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call>'
           '<tool_call>{"name": "get_time", "arguments": {"zone": "CET"}}</tool_call>')
    extra = {"guided_regex": _literal_regex(two)}
    both = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS,
                                          max_tokens=200, extra_body=extra)
    assert [c.function.arguments for c in both.choices[0].message.tool_calls] == [
        '{"zone": "UTC"}', '{"zone": "CET"}']
    one = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS,
                                         max_tokens=200, parallel_tool_calls=False,
                                         extra_body=extra)
    (call,) = one.choices[0].message.tool_calls
    assert call.function.arguments == '{"zone": "UTC"}'
