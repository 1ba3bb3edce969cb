"""Request and response models of the OpenAI-compatible API (pydantic v2).

Requests are strict: an unknown field is a 400 naming it, and a field OpenAI defines that
this server does not implement (``UNSUPPORTED``) is a 400 naming it too. Types are checked
here; ranges are checked by SamplingParams, the intake and the server limits, so every range
error has one wording.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    StrictStr,
    model_serializer,
)

TokenIds = list[StrictInt]
PromptInput = Union[StrictStr, list[StrictStr], TokenIds, list[TokenIds]]


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    # fields OpenAI (or vLLM) defines that this server refuses by name when they are sent
    UNSUPPORTED: ClassVar[tuple[str, ...]] = ()

    def unsupported_fields(self) -> list[str]:
        return [f for f in self.UNSUPPORTED
                if f in self.model_fields_set and getattr(self, f) is not None]


class StreamOptions(_Request):
    include_usage: StrictBool = False
    continuous_usage_stats: StrictBool | None = None
    UNSUPPORTED = ("continuous_usage_stats",)


class JsonSchemaFormat(_Request):
    name: StrictStr = "response"
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputsField(_Request):
    """vLLM's ``structured_outputs`` request field (the successor of ``guided_*``)."""

    json_: dict[str, Any] | StrictStr | None = Field(default=None, alias="json")
    regex: StrictStr | None = None
    choice: list[StrictStr] | None = None
    grammar: StrictStr | None = None
    json_object: StrictBool | None = None
    whitespace_pattern: StrictStr | None = None
    structural_tag: StrictStr | None = None
    UNSUPPORTED = ("whitespace_pattern", "structural_tag")


class SamplingFields(_Request):
    """Fields shared by completions and chat completions (OpenAI names, vLLM extensions)."""

    model: StrictStr | None = None
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stop: StrictStr | list[StrictStr] | None = None
    stop_token_ids: list[StrictInt] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: StrictBool = False
    min_tokens: int = 0
    include_stop_str_in_output: StrictBool = False
    skip_special_tokens: StrictBool = True
    echo: StrictBool = False
    user: StrictStr | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    # token controls (OpenAI's logit_bias; vLLM's allowed_token_ids and bad_words)
    logit_bias: dict[str, float] | None = None
    allowed_token_ids: list[StrictInt] | None = None
    bad_words: list[StrictStr] | None = None
    # structured outputs: OpenAI's response_format, vLLM's guided_* and structured_outputs
    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | StrictStr | None = None
    guided_regex: StrictStr | None = None
    guided_choice: list[StrictStr] | None = None
    guided_grammar: StrictStr | None = None
    guided_decoding_backend: StrictStr | None = None
    guided_whitespace_pattern: StrictStr | None = None
    structured_outputs: StructuredOutputsField | None = None
    # defined by OpenAI or vLLM, not implemented here: refused by name
    service_tier: Any = None
    store: Any = None
    metadata: Any = None
    prompt_logprobs: Any = None
    truncate_prompt_tokens: Any = None
    priority: Any = None
    UNSUPPORTED = ("guided_whitespace_pattern", "service_tier", "store", "metadata",
                   "prompt_logprobs", "truncate_prompt_tokens", "priority")

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingFields):
    prompt: PromptInput
    max_tokens: int | None = 16
    logprobs: int | None = None
    suffix: StrictStr | None = None
    best_of: int | None = None
    UNSUPPORTED = (*SamplingFields.UNSUPPORTED, "suffix")


class FunctionDefinition(_Request):
    name: StrictStr
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class ToolDefinition(_Request):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Request):
    name: StrictStr


class NamedToolChoice(_Request):
    type: Literal["function"] = "function"
    function: NamedFunction


class ChatCompletionRequest(SamplingFields):
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: StrictBool = False
    top_logprobs: int | None = None
    add_generation_prompt: StrictBool = True
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    # OpenAI fields this server does not implement
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None
    functions: Any = None
    function_call: Any = None
    verbosity: Any = None
    prompt_cache_key: Any = None
    safety_identifier: Any = None
    UNSUPPORTED = (*SamplingFields.UNSUPPORTED, "audio", "modalities", "prediction",
                   "reasoning_effort", "web_search_options", "functions", "function_call",
                   "verbosity", "prompt_cache_key", "safety_identifier")


class TokenizeRequest(_Request):
    model: StrictStr | None = None
    prompt: StrictStr | None = None
    messages: list[dict[str, Any]] | None = None
    add_special_tokens: StrictBool = True
    add_generation_prompt: StrictBool = True


class DetokenizeRequest(_Request):
    model: StrictStr | None = None
    tokens: TokenIds


# ---- responses ---------------------------------------------------------------------------
class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> UsageInfo:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class CompletionLogprobs(BaseModel):
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    id: str = Field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class _DropNone(BaseModel):
    """Serialized without the fields named in ``_drop_if_none`` when they are None (OpenAI
    leaves them out of stream chunks)."""

    _drop_if_none: tuple[str, ...] = ()

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name in self._drop_if_none:
            if data.get(name, 0) is None:
                del data[name]
        return data


class DeltaFunctionCall(_DropNone):
    _drop_if_none = ("name",)
    name: str | None = None
    arguments: str = ""


class DeltaToolCall(_DropNone):
    _drop_if_none = ("id", "type")
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


class DeltaMessage(_DropNone):
    _drop_if_none = ("role", "content", "tool_calls")
    role: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionChunk(_DropNone):
    _drop_if_none = ("usage",)
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None


class CompletionChunk(_DropNone):
    _drop_if_none = ("usage",)
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "membound"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
