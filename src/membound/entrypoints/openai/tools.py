"""Tool calling on chat completions: ``tools`` + ``tool_choice`` -> what to render, what to
constrain, and how to read the calls back.

| tool_choice | the model | calls come from |
|---|---|---|
| ``none`` | sees the tools, may not call | nothing (plain content) |
| ``auto`` (default with tools) | free to call in its own format | the ``--tool-call-parser`` |
| ``required`` | must call >= 1 tool: the grammar allows only ``[{"name", "parameters"}, ...]`` | that JSON |
| ``{"type": "function", "function": {"name"}}`` | must call that one: the grammar is its parameters schema | the JSON arguments |

Forced calls are grammar-constrained, so their arguments always validate against the
function's parameters (unless ``max_tokens`` cuts them: then the reply is the raw text with
``finish_reason: "length"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from membound.entrypoints.openai.errors import bad_request
from membound.entrypoints.openai.protocol import ChatCompletionRequest, FunctionCall, ToolCall
from membound.entrypoints.openai.tool_parsers import ParsedCall, ToolParser, get_tool_parser
from membound.sampling_params import StructuredOutputsParams

_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolPlan:
    mode: str  # "none" (also: no tools), "auto", "required" or "named"
    tools: list[dict[str, Any]] | None  # what the chat template sees
    structured: StructuredOutputsParams | None  # the grammar of a forced call
    parser: ToolParser | None  # auto: the model family's format
    function: str | None = None  # named: the function's name
    single: bool = False  # parallel_tool_calls false: auto keeps the first call only

    @property
    def calls_tools(self) -> bool:
        return self.mode != "none"

    def hold(self, text: str) -> int:
        """How much of a growing reply may stream as content now."""
        if self.mode in ("required", "named"):
            return 0
        if self.mode == "auto" and self.parser is not None:
            return self.parser.start(text)
        return len(text)

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]] | None:
        """(content, calls) from a finished reply, or None when it holds no valid call."""
        if self.mode == "named":
            calls = _forced_named(text, self.function or "")
            return (None, calls) if calls else None
        if self.mode == "required":
            calls = _forced_required(text)
            return (None, calls) if calls else None
        if self.mode == "auto" and self.parser is not None:
            content, parsed = self.parser.parse(text)
            if self.single:
                parsed = parsed[:1]
            return (content, [_tool_call(p) for p in parsed]) if parsed else None
        return None


def plan_tools(req: ChatCompletionRequest, parser_name: str | None) -> ToolPlan:
    choice = req.tool_choice
    if not req.tools:
        if choice not in (None, "none"):
            raise bad_request("tool_choice needs tools", param="tool_choice")
        return ToolPlan("none", None, None, None)
    tools = [t.model_dump(exclude_none=True, by_alias=True) for t in req.tools]
    functions = {t.function.name: t.function for t in req.tools}
    if choice is None:
        choice = "auto"
    if choice == "none":
        return ToolPlan("none", tools, None, None)
    if choice == "auto":
        if parser_name is None:
            raise bad_request(
                '"auto" tool choice needs the server started with --tool-call-parser '
                "(hermes, llama3_json or mistral, matching the model); or send tool_choice "
                '"required" or a named function',
                param="tool_choice",
            )
        return ToolPlan("auto", tools, None, get_tool_parser(parser_name),
                        single=req.parallel_tool_calls is False)
    if choice == "required":
        variants = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": name},
                    "parameters": f.parameters or _EMPTY_PARAMETERS,
                },
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
            for name, f in functions.items()
        ]
        schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": variants}}
        if req.parallel_tool_calls is False:
            schema["maxItems"] = 1
        return ToolPlan("required", tools, StructuredOutputsParams(json=schema), None)
    name = choice.function.name  # type: ignore[union-attr]
    if name not in functions:
        raise bad_request(
            f"tool_choice names the function {name!r}, which is not in tools "
            f"({', '.join(sorted(functions))})",
            param="tool_choice",
        )
    spec = StructuredOutputsParams(json=functions[name].parameters or _EMPTY_PARAMETERS)
    return ToolPlan("named", tools, spec, None, name)


def _tool_call(p: ParsedCall) -> ToolCall:
    return ToolCall(function=FunctionCall(name=p.name, arguments=p.arguments))


def _forced_named(text: str, name: str) -> list[ToolCall]:
    try:
        args = json.loads(text)
    except ValueError:
        return []
    if not isinstance(args, dict):
        return []
    return [_tool_call(ParsedCall(name, json.dumps(args, ensure_ascii=False)))]


def _forced_required(text: str) -> list[ToolCall]:
    try:
        items = json.loads(text)
    except ValueError:
        return []
    if not isinstance(items, list) or not items:
        return []
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return []
        args = item.get("parameters", {})
        calls.append(_tool_call(ParsedCall(item["name"], json.dumps(args, ensure_ascii=False))))
    return calls
