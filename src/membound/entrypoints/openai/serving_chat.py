"""POST /v1/chat/completions: the model's chat template renders the messages, then one engine
request with ``n`` choices; streaming or not, with OpenAI's chat logprobs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from membound.engine.async_engine import RequestStream
from membound.entrypoints.openai.errors import bad_request
from membound.entrypoints.openai.protocol import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessage,
    ChatStreamChoice,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    TokenLogprob,
    TopLogprob,
    UsageInfo,
    random_id,
)
from membound.entrypoints.openai.serving_base import (
    AbortingStreamingResponse,
    ServerState,
    final_outputs,
    log_finished,
    merged,
    parse_body,
    safe_logprob,
    sampling_params,
    sse_stream,
    stream_safe_len,
    structured_spec,
    submit_all,
    top_items,
    validate_request,
)
from membound.entrypoints.openai.tools import ToolPlan, plan_tools
from membound.outputs import CompletionOutput, RequestOutput


@dataclass
class _Job:
    request_id: str
    model: str
    req: ChatCompletionRequest
    prompt_ids: list[int]
    echo_text: str  # the last assistant message, prepended when echo is set
    tools: ToolPlan


def encode_messages(
    state: ServerState, messages: list, add_generation_prompt: bool,
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    """Render and tokenize chat messages; template and message errors are 400s."""
    tok = state.need_tokenizer("chat")
    if not messages:
        raise bad_request("messages is empty; send at least one message", param="messages")
    try:
        ids = tok.encode_chat(messages, add_generation_prompt=add_generation_prompt, tools=tools,
                              chat_template=state.chat_template,
                              parse_special_in_content=state.parse_special_tokens_in_messages)
    except (ValueError, TypeError) as e:
        raise bad_request(str(e), param="messages") from None
    if not ids:
        raise bad_request("the rendered conversation is empty", param="messages")
    return ids


async def create_chat_completion(state: ServerState, raw: Request) -> Response:
    req = await parse_body(raw, ChatCompletionRequest)
    model = state.check_model(req.model)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None \
        else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs set to true", param="top_logprobs")
    k = (req.top_logprobs or 0) if req.logprobs else None
    state.limits.check(n=req.n, max_tokens=max_tokens, stop=req.stop_list(), logprobs=k,
                       logprobs_param="top_logprobs")
    tools = plan_tools(req, state.tool_call_parser)
    if tools.structured is not None and structured_spec(req) is not None:
        raise bad_request("a forced tool_choice already constrains the output; drop "
                          "response_format / guided_* / structured_outputs", param="tool_choice")
    ids = encode_messages(state, req.messages, req.add_generation_prompt, tools.tools)
    params = sampling_params(state, req, max_tokens, k, structured=tools.structured)
    if tools.parser is not None and tools.parser.needs_special_tokens:
        params = replace(params, skip_special_tokens=False)  # the format's markers are specials
    validated = await validate_request(state, ids, params, max_tokens_param=param)
    last = req.messages[-1]
    echo_text = ""
    if req.echo and last.get("role") == "assistant" and isinstance(last.get("content"), str):
        echo_text = last["content"]
    job = _Job(random_id("chatcmpl"), model, req, ids, echo_text, tools)
    streams = await submit_all(state, job.request_id, [validated])
    if req.stream:
        return AbortingStreamingResponse(
            sse_stream(_chunks(state, job, streams), job.request_id), streams
        )
    (final,) = await final_outputs(streams, raw)
    log_finished(job.request_id, [final])
    return JSONResponse(_response(state, job, final).model_dump())


def _message(job: _Job, c: CompletionOutput) -> tuple[ChatMessage, str | None]:
    """The assistant message of a finished choice and its finish_reason."""
    text = job.echo_text + c.text
    parsed = job.tools.parse(c.text) if job.tools.calls_tools else None
    if parsed is None:
        return ChatMessage(content=text), c.finish_reason
    content, calls = parsed
    return ChatMessage(content=content, tool_calls=calls), "tool_calls"


def _response(state: ServerState, job: _Job, out: RequestOutput) -> ChatCompletionResponse:
    k = job.req.top_logprobs or 0
    choices = []
    for c in out.outputs:
        message, reason = _message(job, c)
        choices.append(ChatChoice(
            index=c.index, message=message,
            logprobs=_logprobs(state, c, k, 0) if job.req.logprobs else None,
            finish_reason=reason, stop_reason=c.stop_reason,
        ))
    usage = UsageInfo.of(len(job.prompt_ids), sum(len(c.token_ids) for c in out.outputs))
    return ChatCompletionResponse(id=job.request_id, model=job.model, choices=choices,
                                  usage=usage)


async def _chunks(
    state: ServerState, job: _Job, streams: list[RequestStream]
) -> AsyncIterator[ChatCompletionChunk]:
    req = job.req
    created = int(time.time())

    def chunk(choice: ChatStreamChoice) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=job.request_id, created=created, model=job.model,
                                   choices=[choice])

    for i in range(req.n):  # the role first, as OpenAI does
        yield chunk(ChatStreamChoice(index=i, delta=DeltaMessage(role="assistant", content="")))
    sent_chars = [0] * req.n
    sent_tokens = [0] * req.n
    done = [False] * req.n
    final: RequestOutput | None = None
    async for _, out in merged(streams):
        for c in out.outputs:
            if done[c.index]:
                continue
            choice, end = _delta(state, job, c, sent_chars[c.index], sent_tokens[c.index])
            if choice is None:
                continue
            sent_chars[c.index] = end
            sent_tokens[c.index] = len(c.token_ids)
            done[c.index] = c.finished()
            yield chunk(choice)
        final = out if out.finished else final
    if final is not None:
        log_finished(job.request_id, [final])
    if req.include_usage and final is not None:
        usage = UsageInfo.of(len(job.prompt_ids), sum(len(c.token_ids) for c in final.outputs))
        yield ChatCompletionChunk(id=job.request_id, created=created, model=job.model,
                                  choices=[], usage=usage)


def _delta(
    state: ServerState, job: _Job, c: CompletionOutput, sent_chars: int, sent_tokens: int
) -> tuple[ChatStreamChoice | None, int]:
    """The next chunk of one choice and how many characters it has streamed after it. Tool
    replies hold back what may be a call; a finished one sends its calls in one delta."""
    req = job.req
    finished = c.finished()
    end = stream_safe_len(c.text, finished, req.stop_list())
    if job.tools.calls_tools and not finished:
        end = min(end, max(sent_chars, job.tools.hold(c.text)))
    text = c.text[sent_chars:end]
    new_tokens = len(c.token_ids) > sent_tokens
    first = sent_tokens == 0 and sent_chars == 0
    if first and job.echo_text:
        text = job.echo_text + text
    if not (text or finished or (new_tokens and req.logprobs)):
        return None, sent_chars
    logprobs = _logprobs(state, c, req.top_logprobs or 0, sent_tokens) if req.logprobs else None
    delta = DeltaMessage(content=text) if text else DeltaMessage()
    reason = c.finish_reason
    parsed = job.tools.parse(c.text) if finished and job.tools.calls_tools else None
    if parsed is not None:
        _, calls = parsed
        unsent = c.text[sent_chars:max(sent_chars, job.tools.hold(c.text))].strip()
        delta = DeltaMessage(content=unsent or None, tool_calls=[
            DeltaToolCall(index=j, id=call.id, type="function",
                          function=DeltaFunctionCall(name=call.function.name,
                                                     arguments=call.function.arguments))
            for j, call in enumerate(calls)
        ])
        reason = "tool_calls"
    choice = ChatStreamChoice(index=c.index, delta=delta, logprobs=logprobs,
                              finish_reason=reason, stop_reason=c.stop_reason)
    return choice, end


def _logprobs(state: ServerState, c: CompletionOutput, k: int, start: int) -> ChatLogprobs:
    content = []
    for tid, lp in zip(c.token_ids[start:], (c.logprobs or [])[start:], strict=False):
        text = state.token_text(tid)
        tops = [
            TopLogprob(token=state.token_text(t), logprob=safe_logprob(v),
                       bytes=list(state.token_text(t).encode("utf-8")))
            for t, v in top_items(lp, k)
        ]
        content.append(TokenLogprob(
            token=text, logprob=safe_logprob(lp.get(tid, float("-inf"))),
            bytes=list(text.encode("utf-8")), top_logprobs=tops,
        ))
    return ChatLogprobs(content=content)
