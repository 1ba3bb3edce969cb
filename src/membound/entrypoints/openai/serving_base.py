"""What completions and chat share: body parsing, prompt checks, SamplingParams, submission,
stream merging with disconnect handling, SSE framing and logprob formatting."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import StreamingResponse

from membound.engine.async_engine import (
    AsyncLLMEngine,
    EngineDeadError,
    EngineShutdownError,
    RequestStream,
)
from membound.engine.intake import InvalidRequestError, ValidatedRequest
from membound.engine.tokenizer import Tokenizer
from membound.entrypoints.openai.access_log import note_tokens
from membound.entrypoints.openai.errors import (
    OpenAIError,
    bad_request,
    error_body,
    from_validation_error,
    internal_error,
    unsupported,
)
from membound.entrypoints.openai.limits import ServerLimits
from membound.entrypoints.openai.metrics import ServerMetrics
from membound.entrypoints.openai.protocol import SamplingFields, _Request
from membound.outputs import RequestOutput
from membound.sampling_params import (
    SamplingParams,
    SamplingParamsError,
    StructuredOutputsParams,
)

logger = logging.getLogger("membound.server")

M = TypeVar("M", bound=BaseModel)
_DISCONNECT_POLL_S = 0.5


class ClientDisconnected(Exception):
    """The client went away before its (non-streaming) response was ready."""


@dataclass
class ServerState:
    """Everything a route needs; one per app."""

    engine: AsyncLLMEngine
    model_names: list[str]
    model_path: str
    max_model_len: int
    vocab_size: int
    tokenizer: Tokenizer | None
    limits: ServerLimits
    metrics: ServerMetrics
    sampling_defaults: dict[str, Any] = field(default_factory=dict)  # generation_config.json
    chat_template: str | None = None  # --chat-template; None: the model's
    parse_special_tokens_in_messages: bool = False
    tool_call_parser: str | None = None  # --tool-call-parser: tool_choice "auto" reads calls
    _token_text: dict[int, str] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return self.model_names[0]

    def check_model(self, name: str | None) -> str:
        if name is None or name in self.model_names:
            return self.model_name if name is None else name
        raise OpenAIError(
            404, f"the model {name!r} does not exist; this server serves "
            f"{', '.join(repr(n) for n in self.model_names)}",
            param="model", code="model_not_found",
        )

    def need_tokenizer(self, what: str) -> Tokenizer:
        if self.tokenizer is None:
            raise bad_request(f"{what} needs a tokenizer and this model has none; send token ids")
        return self.tokenizer

    def token_text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            tok = self.tokenizer
            text = tok.decode([token_id], skip_special_tokens=False) if tok else str(token_id)
            if len(self._token_text) < 1_000_000:
                self._token_text[token_id] = text
        return text


# ---- parsing -----------------------------------------------------------------------------
def check_json_content_type(raw: Request) -> None:
    """415 unless the body is declared ``application/json`` (parameters such as charset
    allowed): a browser can send a cross-site text/plain POST without a preflight."""
    media = raw.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        shown = f"{media!r}" if media else "none"
        raise OpenAIError(415, f"the request body must be JSON sent with Content-Type: "
                          f"application/json; got {shown}", code="unsupported_media_type")


async def parse_body(raw: Request, model: type[M]) -> M:
    """JSON body -> ``model``: 415 unless declared JSON; 400 for anything malformed (invalid
    UTF-8, lone surrogates, unknown fields) and for known fields the server does not support."""
    check_json_content_type(raw)
    body = await raw.body()
    try:
        obj = json.loads(body)
    except UnicodeDecodeError as e:
        raise bad_request(f"the request body is not valid UTF-8 ({e.reason} at byte {e.start})",
                          code="invalid_utf8") from None
    except (ValueError, RecursionError) as e:
        raise bad_request(f"the request body is not valid JSON ({e})", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    if b"\\u" in body:
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request("the request contains an unpaired UTF-16 surrogate (\\ud800-\\udfff)"
                              " escape; strings must be valid Unicode", code="invalid_utf8") from None
    try:
        parsed = model.model_validate(obj)
    except ValidationError as e:
        raise from_validation_error(e) from None
    _refuse_unsupported(parsed, "")
    return parsed


def _refuse_unsupported(obj: BaseModel, prefix: str) -> None:
    """400 for the first field sent that the server knows but does not implement."""
    if isinstance(obj, _Request):
        for name in obj.unsupported_fields():
            raise unsupported(prefix + name)
    for name in obj.model_fields_set:
        value = getattr(obj, name, None)
        if isinstance(value, BaseModel):
            _refuse_unsupported(value, f"{prefix}{name}.")


# ---- prompts and sampling ----------------------------------------------------------------
async def validate_request(
    state: ServerState, prompt: str | list[int], params: SamplingParams,
    max_tokens_param: str = "max_tokens",
) -> ValidatedRequest:
    """The engine's one intake (tokenize, check lengths and ids, compile the grammar), run
    off the event loop; its InvalidRequestError becomes a 400 naming the field."""
    try:
        return await asyncio.to_thread(state.engine.engine.process_request, prompt, params)
    except InvalidRequestError as e:
        param = max_tokens_param if e.param == "max_tokens" else e.param
        raise bad_request(str(e), param=param, code=e.code) from None


def sampling_params(
    state: ServerState, req: SamplingFields, max_tokens: int | None, logprobs: int | None,
    prompt_logprobs: int | None = None, structured: StructuredOutputsParams | None = None,
) -> SamplingParams:
    """Request fields -> SamplingParams; a SamplingParamsError becomes a 400 naming the field."""
    kwargs: dict[str, Any] = {
        **state.sampling_defaults,  # the checkpoint's generation_config; request fields win
        "n": req.n, "max_tokens": max_tokens, "stop": req.stop_list(),
        "stop_token_ids": req.stop_token_ids, "seed": req.seed, "ignore_eos": req.ignore_eos,
        "min_tokens": req.min_tokens, "logprobs": logprobs, "prompt_logprobs": prompt_logprobs,
        "include_stop_str_in_output": req.include_stop_str_in_output,
        "skip_special_tokens": req.skip_special_tokens, "logit_bias": req.logit_bias,
        "allowed_token_ids": req.allowed_token_ids, "bad_words": req.bad_words,
        "structured_outputs": structured if structured is not None else structured_spec(req),
    }
    for name in ("temperature", "top_p", "top_k", "min_p", "presence_penalty",
                 "frequency_penalty", "repetition_penalty"):
        value = getattr(req, name)
        if value is not None:
            kwargs[name] = value
    try:
        return SamplingParams(**kwargs)
    except SamplingParamsError as e:
        raise bad_request(str(e), param=e.param) from None
    except (OverflowError, ValueError, TypeError) as e:
        raise bad_request(f"invalid sampling parameter: {e}") from None


def structured_spec(req: SamplingFields) -> StructuredOutputsParams | None:
    """response_format, guided_* or structured_outputs -> one spec (at most one source)."""
    if req.guided_decoding_backend not in (None, "xgrammar", "auto"):
        raise bad_request(f"guided_decoding_backend {req.guided_decoding_backend!r} is not "
                          "available; this server uses 'xgrammar'",
                          param="guided_decoding_backend")
    found: dict[str, dict[str, Any]] = {}
    rf = req.response_format
    if rf is not None and rf.type == "json_object":
        found["response_format"] = {"json_object": True}
    elif rf is not None and rf.type == "json_schema":
        if rf.json_schema is None or rf.json_schema.schema_ is None:
            raise bad_request("response_format json_schema needs json_schema.schema",
                              param="response_format.json_schema.schema")
        found["response_format"] = {"json": rf.json_schema.schema_,
                                    "strict": bool(rf.json_schema.strict)}
    guided = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
              "guided_grammar": "grammar"}
    for name, key in guided.items():
        if getattr(req, name) is not None:
            found[name] = {key: getattr(req, name)}
    so = req.structured_outputs
    if so is not None:
        fields = {"json": so.json_, "regex": so.regex, "choice": so.choice,
                  "grammar": so.grammar, "json_object": so.json_object or None}
        found["structured_outputs"] = {k: v for k, v in fields.items() if v is not None}
    if not found:
        return None
    if len(found) > 1:
        raise bad_request(f"send one way of constraining the output, not {' and '.join(found)}",
                          param=sorted(found)[1])
    (param, kwargs), = found.items()
    try:
        return StructuredOutputsParams(**kwargs)
    except SamplingParamsError as e:
        raise bad_request(f"{param}: {e}", param=param) from None


# ---- submission and streams --------------------------------------------------------------
async def submit_all(
    state: ServerState, request_id: str, requests: list[ValidatedRequest]
) -> list[RequestStream]:
    """Add one engine request per prompt; on any failure abort the ones already added."""
    state.limits.check_queue(state.engine.num_waiting)
    streams: list[RequestStream] = []
    try:
        for i, r in enumerate(requests):
            sub_id = request_id if len(requests) == 1 else f"{request_id}-{i}"
            streams.append(await state.engine.add_request(sub_id, r, r.params))
    except BaseException as e:
        for s in streams:
            s.abort()
        if isinstance(e, EngineDeadError):
            raise engine_dead(e) from None
        if isinstance(e, ValueError):
            raise bad_request(str(e), param="prompt" if "prompt" in str(e) else None) from None
        raise
    return streams


def engine_dead(e: BaseException) -> OpenAIError:
    code = "server_shutting_down" if isinstance(e, EngineShutdownError) else "engine_dead"
    return OpenAIError(503, f"{e}", code=code)


async def merged(
    streams: list[RequestStream], raw: Request | None = None
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Yield (prompt index, output) from all streams as outputs arrive. With ``raw``, poll
    for a client disconnect. Leaving early (disconnect, error, cancel) aborts the rest."""
    pending = {asyncio.ensure_future(s.__anext__()): i for i, s in enumerate(streams)}
    try:
        while pending:
            done, _ = await asyncio.wait(
                pending, timeout=_DISCONNECT_POLL_S, return_when=asyncio.FIRST_COMPLETED
            )
            if raw is not None and await raw.is_disconnected():
                logger.info("client disconnected; aborting %d request(s)", len(streams))
                raise ClientDisconnected
            for task in done:
                i = pending.pop(task)
                try:
                    out = task.result()
                except StopAsyncIteration:
                    continue
                except EngineDeadError as e:
                    raise engine_dead(e) from None
                yield i, out
                if not out.finished:
                    pending[asyncio.ensure_future(streams[i].__anext__())] = i
    finally:
        for task in pending:
            task.cancel()
        for s in streams:
            s.abort()


async def final_outputs(streams: list[RequestStream], raw: Request) -> list[RequestOutput]:
    finals: list[RequestOutput | None] = [None] * len(streams)
    async for i, out in merged(streams, raw):
        if out.finished:
            finals[i] = out
    assert all(f is not None for f in finals)
    return finals  # type: ignore[return-value]


def log_finished(request_id: str, outs: list[RequestOutput]) -> None:
    n_prompt = sum(len(o.prompt_token_ids) for o in outs)
    n_out = sum(len(c.token_ids) for o in outs for c in o.outputs)
    reasons = sorted({str(c.finish_reason) for o in outs for c in o.outputs})
    note_tokens(n_prompt, n_out)
    logger.info("%s finished: %d prompt tokens, %d output tokens, finish %s",
                request_id, n_prompt, n_out, ",".join(reasons))


# ---- SSE ---------------------------------------------------------------------------------
def sse(payload: BaseModel | dict[str, Any]) -> str:
    if isinstance(payload, BaseModel):
        return f"data: {payload.model_dump_json(exclude_none=False)}\n\n"
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def sse_stream(chunks: AsyncIterator[BaseModel], request_id: str) -> AsyncIterator[str]:
    """Frame chunks as SSE, end with [DONE]; an error after the headers went out becomes an
    error event (a client that went away just stops the generator, aborting its requests)."""
    try:
        async for chunk in chunks:
            yield sse(chunk)
    except OpenAIError as e:
        yield sse(e.body())
    except Exception:  # noqa: BLE001 - never a traceback to the client
        logger.exception("%s: streaming failed", request_id)
        err = internal_error()
        yield sse(error_body(err.message, err.type, None, err.code))
    yield "data: [DONE]\n\n"


# ---- logprobs ----------------------------------------------------------------------------
def top_items(lp: dict[int, float], k: int) -> list[tuple[int, float]]:
    return sorted(lp.items(), key=lambda kv: -kv[1])[:k]


def safe_logprob(value: float) -> float:
    """JSON has no -inf; clamp like vLLM does."""
    return value if math.isfinite(value) else -9999.0


def stream_safe_len(text: str, finished: bool, stop: list[str]) -> int:
    """How much of a cumulative text may be streamed now. The detokenizer's text can end in a
    tail that a stop string may still claim (and cut); any such tail lies within the last
    ``len(longest stop) - 1`` characters, so those wait until the sequence finishes."""
    if finished or not stop:
        return len(text)
    return max(0, len(text) - (max(len(s) for s in stop) - 1))


class AbortingStreamingResponse(StreamingResponse):
    """A StreamingResponse that aborts its engine requests however the response ends (also
    when the client is gone before the body iterator ever started)."""

    def __init__(self, content: AsyncIterator[str], streams: list[RequestStream]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache"})
        self._streams = streams

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for s in self._streams:
                s.abort()
