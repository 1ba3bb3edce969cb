"""Tool-call parsers (hermes, llama3_json, mistral) and tool history for chat templates
(engine/chat_template.py turns OpenAI's JSON-text arguments into dicts, as templates expect)."""

from __future__ import annotations

import json

import pytest

from membound.engine.chat_template import ChatTemplate
from membound.entrypoints.openai.tool_parsers import get_tool_parser


def test_hermes_parses_calls_and_content() -> None:
    p = get_tool_parser("hermes")
    text = (
        'Let me check.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n'
        '<tool_call>{"name": "g", "arguments": {}}</tool_call>'
    )
    content, calls = p.parse(text)
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"a": 1}), ("g", {})]
    assert p.parse("no calls here") == ("no calls here", [])
    assert p.parse("<tool_call>{not json</tool_call>")[1] == []
    assert p.start("abc <tool") == 4 and p.start("abc") == 3 and p.start("x<tool_call>") == 1


def test_llama3_json_parses_one_or_several() -> None:
    p = get_tool_parser("llama3_json")
    content, calls = p.parse(
        '<|python_tag|>{"name": "f", "parameters": {"x": "y"}}; {"name": "g", "parameters": {}}'
    )
    assert content is None and [c.name for c in calls] == ["f", "g"]
    assert json.loads(calls[0].arguments) == {"x": "y"}
    assert p.parse("Hello there") == ("Hello there", [])
    assert p.start("  ") == 0 and p.start(" {") == 0 and p.start("Hi") == 2


def test_mistral_parses_the_array() -> None:
    p = get_tool_parser("mistral")
    content, calls = p.parse(
        '[TOOL_CALLS][{"name": "f", "arguments": {"q": 1}}, '
        '{"name": "g", "arguments": "{\\"r\\": 2}"}]'
    )
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"q": 1}), ("g", {"r": 2})]
    assert p.parse("[TOOL_CALLS] broken")[1] == []


def test_unknown_parser_is_named() -> None:
    with pytest.raises(ValueError, match="hermes"):
        get_tool_parser("nope")


# A Qwen/Hermes-style template: tool calls rendered with arguments | tojson (a dict).
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.content %}{{ m.content }}{% endif %}"
    '{% for c in m.tool_calls or [] %}<tool_call>{"name": "{{ c.function.name }}", '
    '"arguments": {{ c.function.arguments | tojson }}}</tool_call>{% endfor %}'
    "<|im_end|>\n{% endfor %}"
)


def test_tool_history_renders_like_transformers() -> None:
    history = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "w", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "21C"},
    ]
    text = ChatTemplate(TEMPLATE).render(history, add_generation_prompt=False)
    assert '<tool_call>{"name": "w", "arguments": {"city": "Oslo"}}</tool_call>' in text
    assert "<|im_start|>tool\n21C<|im_end|>" in text
    assert history[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo"}'


def test_bad_tool_calls_in_history_are_named() -> None:
    from membound.engine.chat_template import ChatTemplateError

    bad = [{"role": "assistant", "content": None,
            "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]}]
    with pytest.raises(ChatTemplateError, match=r"messages\[0\].tool_calls\[0\].function.arguments"):
        ChatTemplate(TEMPLATE).render(bad)
    with pytest.raises(ChatTemplateError, match="needs function.name"):
        ChatTemplate(TEMPLATE).render([{"role": "assistant", "content": None,
                                        "tool_calls": [{"function": {}}]}])
