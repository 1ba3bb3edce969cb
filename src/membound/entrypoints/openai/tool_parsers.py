"""Tool-call parsers: find the calls a model wrote in its own format (``tool_choice: auto``).

One parser per model family, picked with ``--tool-call-parser`` as in vLLM:

| name | the model writes |
|---|---|
| ``hermes`` (Hermes, Qwen 2/2.5/3) | ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one block per call |
| ``llama3_json`` (Llama 3.x) | ``{"name": ..., "parameters": {...}}`` as the whole reply (``<|python_tag|>`` optional; several joined by ``;``) |
| ``mistral`` | ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` |

``parse(text)`` returns the content before the calls and the calls; text that does not parse
as calls stays content. ``start(text)`` tells a stream where calls may begin, so the text
before it can be streamed and the rest held back until the choice finishes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text


def _call(obj: Any, args_key: str) -> ParsedCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get(args_key, obj.get("arguments", obj.get("parameters", {})))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ParsedCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _held_prefix(text: str, marker: str) -> int:
    """Index from which ``text`` might be the start of ``marker`` (len(text) if not)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return len(text) - k
    return len(text)


class ToolParser:
    name = ""
    # special tokens the format uses; the server decodes them (skip_special_tokens=False)
    needs_special_tokens = False

    def parse(self, text: str) -> tuple[str | None, list[ParsedCall]]:
        raise NotImplementedError

    def start(self, text: str) -> int:
        """How much of a growing ``text`` is surely content (the rest may open a call)."""
        raise NotImplementedError


class MarkerParser(ToolParser):
    """Calls after a marker string; content is what comes before it."""

    marker = ""

    def start(self, text: str) -> int:
        i = text.find(self.marker)
        return i if i >= 0 else _held_prefix(text, self.marker)


class HermesToolParser(MarkerParser):
    name = "hermes"
    marker = "<tool_call>"
    _block = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)

    def parse(self, text: str) -> tuple[str | None, list[ParsedCall]]:
        i = text.find(self.marker)
        if i < 0:
            return text, []
        calls = []
        for body in self._block.findall(text[i:]):
            try:
                call = _call(json.loads(body), "arguments")
            except ValueError:
                return text, []
            if call is None:
                return text, []
            calls.append(call)
        content = text[:i].strip()
        return (content or None), calls


class MistralToolParser(MarkerParser):
    name = "mistral"
    marker = "[TOOL_CALLS]"
    needs_special_tokens = True

    def parse(self, text: str) -> tuple[str | None, list[ParsedCall]]:
        i = text.find(self.marker)
        if i < 0:
            return text, []
        body = text[i + len(self.marker) :].strip()
        try:
            raw = json.loads(body)
        except ValueError:
            return text, []
        items = raw if isinstance(raw, list) else [raw]
        calls = [_call(item, "arguments") for item in items]
        if not calls or any(c is None for c in calls):
            return text, []
        content = text[:i].strip()
        return (content or None), calls  # type: ignore[return-value]


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"
    needs_special_tokens = True
    _tag = "<|python_tag|>"

    def start(self, text: str) -> int:
        stripped = text.lstrip()
        if not stripped:
            return 0  # undecided: only whitespace so far
        if stripped.startswith(("{", self._tag)) or self._tag.startswith(stripped):
            return 0
        return len(text)

    def parse(self, text: str) -> tuple[str | None, list[ParsedCall]]:
        body = text.strip()
        if body.startswith(self._tag):
            body = body[len(self._tag) :].strip()
        if not body.startswith("{"):
            return text, []
        decoder = json.JSONDecoder()
        calls: list[ParsedCall] = []
        pos = 0
        while pos < len(body):
            try:
                obj, end = decoder.raw_decode(body, pos)
            except ValueError:
                return text, []
            call = _call(obj, "parameters")
            if call is None:
                return text, []
            calls.append(call)
            pos = end
            while pos < len(body) and body[pos] in " \n\t;":
                pos += 1
        return None, calls


PARSERS: dict[str, type[ToolParser]] = {
    p.name: p for p in (HermesToolParser, Llama3JsonToolParser, MistralToolParser)
}


def get_tool_parser(name: str) -> ToolParser:
    try:
        return PARSERS[name]()
    except KeyError:
        raise ValueError(
            f"unknown tool-call parser {name!r}; choose one of {', '.join(sorted(PARSERS))}"
        ) from None
