"""Chat templates: a model's Jinja template rendered in a sandbox, the way transformers does it.

Chat templates ship with model checkpoints, so they are untrusted code. They are compiled in
``jinja2.sandbox.ImmutableSandboxedEnvironment`` (no attribute access to Python internals, no
mutation of the messages) with the same options, filters and globals as Hugging Face
transformers, so a template renders byte-for-byte as it does there:

- ``trim_blocks=True, lstrip_blocks=True`` and the ``loopcontrols`` extension;
- a ``tojson`` filter that does not HTML-escape and keeps non-ASCII text (``ensure_ascii=False``);
- globals ``raise_exception(msg)``, ``strftime_now(fmt)``, ``dict(...)`` and ``namespace(...)``;
- the ``{% generation %}`` block tag (rendered as its body).

Every failure (syntax error, ``raise_exception``, sandbox violation, a crash inside the template)
surfaces as :class:`ChatTemplateError`, a ``ValueError`` whose message says what went wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["ChatTemplate", "ChatTemplateError", "normalize_messages"]


class ChatTemplateError(ValueError):
    """A chat template could not be compiled or rendered, or the messages are malformed."""


class _TemplateRaised(ChatTemplateError):
    """Raised by the template itself through ``raise_exception(message)``."""


def _raise_exception(message: object) -> None:
    raise _TemplateRaised(f"the chat template rejected the conversation: {message}")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson HTML-escapes '<', '>', '&' and "'", which templates do not expect.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """``dict`` for templates, without handing them the ``dict`` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace()`` that refuses underscore-prefixed names (no route to CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - same trick as jinja's Namespace
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"templates may not set underscore-prefixed attribute {name!r}")


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: marks assistant text; renders its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_render_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Any) -> str:
        return str(caller())


def _make_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


class ChatTemplate:
    """One compiled chat template. Compile once, render many times (it holds no request state)."""

    def __init__(self, source: str) -> None:
        if not isinstance(source, str) or not source.strip():
            raise ChatTemplateError("a chat template must be a non-empty Jinja template string")
        self.source = source
        try:
            self._template = _make_environment().from_string(source)
        except TemplateSyntaxError as exc:
            raise ChatTemplateError(
                f"the chat template has a Jinja syntax error at line {exc.lineno}: {exc.message}; "
                "fix the template or pass a different one with chat_template="
            ) from exc

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        **variables: Any,
    ) -> str:
        """Render ``messages`` (validated by :func:`normalize_messages`) with ``variables``.

        ``variables`` become template variables: ``bos_token``, ``eos_token``, ``tools``,
        ``documents`` and any model-specific switches (``enable_thinking``, ...).
        ``continue_final_message`` cuts the text right after the last message's content, so
        the model continues that message instead of starting a new turn.
        """
        if add_generation_prompt and continue_final_message:
            raise ChatTemplateError(
                "add_generation_prompt and continue_final_message cannot both be true: the first "
                "opens a new assistant turn, the second continues the last message"
            )
        chat = normalize_messages(messages)
        try:
            text = self._template.render(
                messages=chat, add_generation_prompt=add_generation_prompt, **variables
            )
        except ChatTemplateError:
            raise
        except SecurityError as exc:
            raise ChatTemplateError(
                f"the chat template attempted an operation the sandbox forbids ({exc}); "
                "templates may only read the messages and variables they are given"
            ) from exc
        except TemplateError as exc:
            raise ChatTemplateError(f"the chat template failed to render: {exc}") from exc
        except Exception as exc:  # a template can raise anything; report it uniformly
            raise ChatTemplateError(
                f"the chat template failed to render: {type(exc).__name__}: {exc}"
            ) from exc
        if continue_final_message:
            text = _cut_after_final_message(text, chat)
        return text


def _cut_after_final_message(text: str, chat: list[dict[str, Any]]) -> str:
    if not chat or not isinstance(chat[-1].get("content"), str):
        raise ChatTemplateError("continue_final_message needs a last message with text content")
    final = chat[-1]["content"]
    for needle in (final, final.strip()):
        index = text.rfind(needle)
        if needle and index != -1:
            return text[: index + len(needle)]
    raise ChatTemplateError(
        "continue_final_message: the last message's content does not appear in the rendered "
        "template, so it cannot be continued"
    )


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate chat messages and return copies whose ``content`` is a string.

    Each message is a mapping with a string ``role`` and a ``content`` that is a string, a list
    of ``{"type": "text", "text": ...}`` parts (joined with newlines), or ``None`` for an
    assistant message that only carries ``tool_calls``. Tool calls' JSON-text ``arguments``
    become dicts (transformers' convention); tool results are ``{"role": "tool",
    "tool_call_id", "content"}``. Other keys pass through unchanged.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatTemplateError(
            f"messages must be a list of dicts like {{'role': 'user', 'content': 'hi'}}, "
            f"got {type(messages).__name__}"
        )
    return [_normalize_message(i, message) for i, message in enumerate(messages)]


def _normalize_message(index: int, message: Any) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(message, Mapping):
        raise ChatTemplateError(
            f"{where} must be a dict with 'role' and 'content', got {type(message).__name__}"
        )
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise ChatTemplateError(
            f"{where} needs a 'role' string such as 'system', 'user' or 'assistant', got {role!r}"
        )
    if "content" not in message:
        raise ChatTemplateError(f"{where} (role {role!r}) has no 'content'; add the message text")
    out = dict(message)
    out["content"] = _content_text(where, role, message["content"], message)
    if message.get("tool_calls"):
        out["tool_calls"] = _tool_calls(where, message["tool_calls"])
    return out


def _tool_calls(where: str, calls: Any) -> list[dict[str, Any]]:
    """OpenAI's tool calls with ``function.arguments`` as a dict, as templates expect (OpenAI
    sends the arguments as JSON text; transformers' templates render them with ``tojson``)."""
    if not isinstance(calls, Sequence) or isinstance(calls, (str, bytes)):
        raise ChatTemplateError(f"{where}.tool_calls must be a list of tool calls")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise ChatTemplateError(
                f"{where}.tool_calls[{j}] needs function.name, like "
                '{"type": "function", "function": {"name": "f", "arguments": "{}"}}'
            )
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                raise ChatTemplateError(
                    f"{where}.tool_calls[{j}].function.arguments is not valid JSON"
                ) from None
        out.append({**call, "function": {**fn, "arguments": args}})
    return out


def _content_text(where: str, role: str, content: Any, message: Mapping[str, Any]) -> str | None:
    if isinstance(content, str):
        return content
    if content is None:
        if role == "assistant" and message.get("tool_calls"):
            return None
        raise ChatTemplateError(
            f"{where} has content None; only an assistant message with tool_calls may omit text"
        )
    if isinstance(content, Sequence) and not isinstance(content, bytes):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ChatTemplateError(
                    f"{where}.content[{j}] is {kind!r}; only text parts "
                    "{'type': 'text', 'text': ...} are supported (membound serves text models)"
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise ChatTemplateError(f"{where}.content[{j}] needs a 'text' string")
            texts.append(text)
        return "\n".join(texts)
    raise ChatTemplateError(
        f"{where} content must be a string or a list of text parts, got {type(content).__name__}"
    )


# ---- message content as text: the template's own text is parsed for special tokens, the
# content the caller sent is not (so '<|im_start|>' typed by a user stays text) -----------
_MARK = "\ue000{}\ue001"
_MARK_RE = re.compile("\ue000(\\d+)\ue001")


def mark_contents(chat: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """``chat`` (normalized) with each text content replaced by a marker, and the contents."""
    contents: list[str] = []
    marked = []
    for message in chat:
        content = message.get("content")
        if isinstance(content, str):
            message = {**message, "content": _MARK.format(len(contents))}
            contents.append(content)
        marked.append(message)
    return marked, contents


def split_marked(marked_text: str, contents: list[str], text: str) -> list[tuple[bool, str]]:
    """Pieces ``(is_content, piece)`` of ``marked_text`` with the markers put back; they must
    join to ``text`` (the plain rendering), else the template rewrote some content."""
    pieces: list[tuple[bool, str]] = []
    pos = 0
    for match in _MARK_RE.finditer(marked_text):
        pieces.append((False, marked_text[pos : match.start()]))
        pieces.append((True, contents[int(match.group(1))]))
        pos = match.end()
    pieces.append((False, marked_text[pos:]))
    if "".join(piece for _, piece in pieces) != text:
        raise ChatTemplateError(
            "a message contains special-token text and this chat template rewrites message "
            "content, so that text cannot be kept apart from the template's own tokens; remove "
            "the special-token text, or (trusted callers only) let it be parsed as control "
            "tokens (serve --parse-special-tokens-in-messages)"
        )
    return [(is_content, piece) for is_content, piece in pieces if piece]
