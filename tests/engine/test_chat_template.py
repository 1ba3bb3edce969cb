from __future__ import annotations

from types import SimpleNamespace

import pytest

from membound.engine.chat_template import ChatTemplate, ChatTemplateError, normalize_messages

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "  Hi there  "},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "你好 😀"},
]


def test_chatml(tk: SimpleNamespace) -> None:
    text = ChatTemplate(tk.CHATML_TEMPLATE).render(CHAT[:2])
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n  Hi there  <|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_prompt = ChatTemplate(tk.CHATML_TEMPLATE).render(CHAT[:1], add_generation_prompt=False)
    assert no_prompt == "<|im_start|>system\nBe brief.<|im_end|>\n"


def test_llama3_like(tk: SimpleNamespace) -> None:
    template = ChatTemplate(tk.LLAMA3_TEMPLATE)
    text = template.render(CHAT, bos_token="<|begin_of_text|>", tools=None)
    assert text == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n你好 😀<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_tojson_matches_hf(tk: SimpleNamespace) -> None:
    tools = [{"name": "météo", "description": "<b>&'x'"}]
    text = ChatTemplate(tk.LLAMA3_TEMPLATE).render(CHAT[1:2], bos_token="", tools=tools)
    assert 'Tools: [{"name": "météo", "description": "<b>&\'x\'"}]<|eot_id|>' in text
    indented = ChatTemplate("{{ x | tojson(indent=2) }}").render([], x={"a": [1]})
    assert indented == '{\n  "a": [\n    1\n  ]\n}'


def test_matches_transformers_render(tk: SimpleNamespace, llama_dir: object) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(llama_dir / "tokenizer.json"))  # type: ignore[operator]
    for template in (tk.CHATML_TEMPLATE, tk.LLAMA3_TEMPLATE):
        for gen in (True, False):
            ours = ChatTemplate(template).render(
                CHAT, add_generation_prompt=gen, bos_token="<s>", tools=None
            )
            theirs = hf.apply_chat_template(
                CHAT,
                chat_template=template,
                tokenize=False,
                add_generation_prompt=gen,
                bos_token="<s>",
            )
            assert ours == theirs


def test_raise_exception_surfaces(tk: SimpleNamespace) -> None:
    with pytest.raises(ChatTemplateError, match="rejected the conversation: Unknown role: robot"):
        ChatTemplate(tk.LLAMA3_TEMPLATE).render(
            [{"role": "robot", "content": "x"}], bos_token="", tools=None
        )


def test_syntax_error_names_line() -> None:
    with pytest.raises(ChatTemplateError, match="syntax error at line 2"):
        ChatTemplate("ok\n{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="non-empty"):
        ChatTemplate("")


@pytest.mark.parametrize(
    "source",
    [
        "{{ messages.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__.__base__.__subclasses__() }}",
        "{{ messages.append(1) }}",
        "{% set d = dict(a=1) %}{{ d.update(b=2) }}",
        "{% set ns = namespace(_x=1) %}{{ ns._x }}",
        "{{ raise_exception.__globals__ }}x{{ raise_exception.__globals__['json'] }}",
    ],
)
def test_sandbox_refuses_unsafe_access(source: str) -> None:
    with pytest.raises(ChatTemplateError, match="sandbox forbids"):
        ChatTemplate(source).render(CHAT)


def test_runtime_error_is_wrapped() -> None:
    with pytest.raises(ChatTemplateError, match="failed to render: .*ZeroDivisionError"):
        ChatTemplate("{{ 1 // 0 }}").render(CHAT)


def test_globals_extensions_and_kwargs() -> None:
    source = (
        "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{% generation %}[{{ m.role }}]{% endgeneration %}{% endfor %}"
        "{{ strftime_now('%Y') | length }}{{ dict(a=1).a }}"
        "{% if enable_thinking %}T{% endif %}"
    )
    assert ChatTemplate(source).render(CHAT, enable_thinking=True) == "[system][user]41T"


def test_content_parts_are_joined() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    chat = [{"role": "user", "content": parts, "name": "bob"}]
    assert normalize_messages(chat) == [{"role": "user", "content": "a\nb", "name": "bob"}]
    assert chat[0]["content"] is parts  # caller's messages untouched
    calls = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}]
    (normalized,) = normalize_messages(calls)
    assert normalized["content"] is None
    assert normalized["tool_calls"][0]["function"] == {"name": "f", "arguments": {"a": 1}}


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ("hello", "must be a list"),
        (["hello"], r"messages\[0\] must be a dict"),
        ([{"content": "x"}], r"messages\[0\] needs a 'role'"),
        ([{"role": "user"}], r"has no 'content'"),
        ([{"role": "user", "content": None}], "content None"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], r"content\[0\] is 'image_url'"),
        ([{"role": "user", "content": [{"type": "text"}]}], "needs a 'text' string"),
        ([{"role": "user", "content": 3}], "must be a string or a list"),
    ],
)
def test_bad_messages(messages: object, match: str) -> None:
    with pytest.raises(ChatTemplateError, match=match):
        ChatTemplate("x").render(messages)  # type: ignore[arg-type]


def test_continue_final_message(tk: SimpleNamespace) -> None:
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The answer is"}]
    text = ChatTemplate(tk.CHATML_TEMPLATE).render(
        chat, add_generation_prompt=False, continue_final_message=True
    )
    assert text.endswith("<|im_start|>assistant\nThe answer is")
    with pytest.raises(ChatTemplateError, match="cannot both be true"):
        ChatTemplate(tk.CHATML_TEMPLATE).render(chat, continue_final_message=True)
