"""POST /v1/completions: one engine request per prompt, ``n`` choices each (choice index
``prompt_index * n + i``), streaming or not, with echo and OpenAI-style logprobs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from membound.entrypoints.openai.errors import bad_request
from membound.entrypoints.openai.protocol import (
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
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
    submit_all,
    top_items,
    validate_request,
)
from membound.outputs import CompletionOutput, RequestOutput


@dataclass
class _Job:
    """A validated completions request, ready to stream or collect."""

    request_id: str
    model: str
    req: CompletionRequest
    prompt_ids: list[list[int]]
    prompt_texts: list[str]


async def create_completion(state: ServerState, raw: Request) -> Response:
    req = await parse_body(raw, CompletionRequest)
    model = state.check_model(req.model)
    prompts = _prompt_list(req.prompt)
    state.limits.check(n=req.n, max_tokens=req.max_tokens, stop=req.stop_list(),
                       logprobs=req.logprobs, num_prompts=len(prompts))
    if req.best_of is not None and req.best_of != req.n:
        raise bad_request(f"best_of={req.best_of} is not supported (only best_of equal to n, "
                          f"{req.n}); ask for n choices and rank them yourself",
                          param="best_of")
    k = req.logprobs
    params = sampling_params(state, req, req.max_tokens, k,
                             prompt_logprobs=k if req.echo and k is not None else None)
    validated = [await validate_request(state, p, params) for p in prompts]
    job = _Job(random_id("cmpl"), model, req, [v.prompt_token_ids for v in validated], [
        v.prompt if v.prompt is not None else _decode(state, v.prompt_token_ids)
        for v in validated
    ])
    streams = await submit_all(state, job.request_id, validated)
    if req.stream:
        return AbortingStreamingResponse(
            sse_stream(_chunks(state, job, streams), job.request_id), streams
        )
    finals = await final_outputs(streams, raw)
    log_finished(job.request_id, finals)
    return JSONResponse(_response(state, job, finals).model_dump())


def _prompt_list(prompt: object) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    assert isinstance(prompt, list)
    if not prompt:
        raise bad_request("prompt is empty; send a string, token ids, or a list of them",
                          param="prompt")
    if isinstance(prompt[0], int):
        return [prompt]  # one prompt of token ids
    return list(prompt)


def _decode(state: ServerState, ids: list[int]) -> str:
    return state.tokenizer.decode(ids, skip_special_tokens=False) if state.tokenizer else ""


def _response(state: ServerState, job: _Job, finals: list[RequestOutput]) -> CompletionResponse:
    req = job.req
    choices = []
    for i, out in enumerate(finals):
        for c in out.outputs:
            prefix = job.prompt_texts[i] if req.echo else ""
            logprobs = None
            if req.logprobs is not None:
                logprobs = _choice_logprobs(state, out, c, req.logprobs, req.echo, 0, len(c.token_ids))
            choices.append(CompletionChoice(
                index=i * req.n + c.index, text=prefix + c.text, logprobs=logprobs,
                finish_reason=c.finish_reason, stop_reason=c.stop_reason,
            ))
    n_out = sum(len(c.token_ids) for o in finals for c in o.outputs)
    usage = UsageInfo.of(sum(len(x) for x in job.prompt_ids), n_out)
    return CompletionResponse(id=job.request_id, model=job.model, choices=choices, usage=usage)


async def _chunks(
    state: ServerState, job: _Job, streams: list
) -> AsyncIterator[CompletionChunk]:
    req = job.req
    created = int(time.time())
    sent_chars: dict[int, int] = {}  # choice index -> characters of text streamed
    sent_tokens: dict[int, int] = {}
    done: set[int] = set()
    finals: dict[int, RequestOutput] = {}
    async for i, out in merged(streams):
        for c in out.outputs:
            idx = i * req.n + c.index
            if idx in done:
                continue
            choice = _delta(state, job, i, out, c, sent_chars.get(idx), sent_tokens.get(idx, 0))
            if choice is None:
                continue
            sent_chars[idx] = stream_safe_len(c.text, c.finished(), req.stop_list())
            sent_tokens[idx] = len(c.token_ids)
            if c.finished():
                done.add(idx)
            choice.index = idx
            yield CompletionChunk(id=job.request_id, created=created, model=job.model,
                                  choices=[choice])
        if out.finished:
            finals[i] = out
    outs = [finals[i] for i in sorted(finals)]
    log_finished(job.request_id, outs)
    if req.include_usage:
        n_out = sum(len(c.token_ids) for o in outs for c in o.outputs)
        usage = UsageInfo.of(sum(len(x) for x in job.prompt_ids), n_out)
        yield CompletionChunk(id=job.request_id, created=created, model=job.model, choices=[],
                              usage=usage)


def _delta(
    state: ServerState, job: _Job, i: int, out: RequestOutput, c: CompletionOutput,
    sent_chars: int | None, sent_tokens: int,
) -> CompletionChoice | None:
    """The next chunk of one choice, or None when there is nothing new to send."""
    req = job.req
    first = sent_chars is None
    start = sent_chars or 0
    end = stream_safe_len(c.text, c.finished(), req.stop_list())
    text = c.text[start:end]
    new_tokens = len(c.token_ids) > sent_tokens
    if not (text or c.finished() or (first and req.echo) or (new_tokens and req.logprobs is not None)):
        return None
    echo = first and req.echo
    if echo:
        text = job.prompt_texts[i] + text
    logprobs = None
    if req.logprobs is not None:
        offset = 0 if first else start + (len(job.prompt_texts[i]) if req.echo else 0)
        logprobs = _choice_logprobs(state, out, c, req.logprobs, echo, sent_tokens,
                                    len(c.token_ids), offset)
    return CompletionChoice(index=c.index, text=text, logprobs=logprobs,
                            finish_reason=c.finish_reason, stop_reason=c.stop_reason)


def _choice_logprobs(
    state: ServerState, out: RequestOutput, c: CompletionOutput, k: int, echo: bool,
    start: int, end: int, offset: int = 0,
) -> CompletionLogprobs:
    """Logprobs of output tokens [start, end), after the prompt's when ``echo``."""
    ids: list[int] = []
    lps: list[dict[int, float] | None] = []
    if echo:
        prompt_lps = list(out.prompt_logprobs or [])
        missing = len(out.prompt_token_ids) - len(prompt_lps)  # the first token has none
        ids += out.prompt_token_ids
        lps += [None] * max(0, missing) + prompt_lps
    ids += c.token_ids[start:end]
    lps += list((c.logprobs or [])[start:end])
    result = CompletionLogprobs()
    for tid, lp in zip(ids, lps, strict=False):
        text = state.token_text(tid)
        result.tokens.append(text)
        result.text_offset.append(offset)
        offset += len(text)
        if lp is None:
            result.token_logprobs.append(None)
            result.top_logprobs.append(None)
            continue
        result.token_logprobs.append(safe_logprob(lp.get(tid, float("-inf"))))
        top: dict[str, float] = {}
        for t, v in top_items(lp, k):  # descending: tokens spelled alike keep the best
            top.setdefault(state.token_text(t), safe_logprob(v))
        result.top_logprobs.append(top)
    return result
