"""``membound eval compare MODEL --kv-cache-dtype fp8``: what a quantized KV cache costs.

Weight quantization can be judged on the model alone (eval.py runs it cache-less); a KV cache
format only shows when attention reads K/V back from the cache. So this runs the real engine
twice, on the model-dtype cache and on the quantized one, with the same small
``max_num_batched_tokens``: a window's prompt is prefilled in chunks, and every chunk after
the first attends over K/V stored by the chunks before it.

    text -> windows of ``window`` tokens -> prompt_logprobs of every token after the first
    perplexity(cache) = exp(mean NLL);  top-1 agreement: the positions where both caches'
    most likely next token is the same;  greedy agreement: continuations of the first
    ``greedy_prompt`` tokens of each window, compared token by token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KVCompareResult:
    num_tokens: int  # prompt positions scored
    kv_cache_dtype: str
    perplexity_reference: float  # model-dtype cache
    perplexity_quantized: float
    perplexity_change: float  # quantized / reference - 1
    top1_agreement: float
    greedy_tokens: int  # continuation tokens compared
    greedy_agreement: float  # fraction of continuation positions with the same token
    greedy_identical_prefix: float  # mean tokens before the first difference, per prompt
    window: int
    max_num_batched_tokens: int


@dataclass(frozen=True)
class _Scores:
    nll: list[float]  # per scored position
    top1: list[int]
    greedy: list[list[int]]


def _score(llm: Any, windows: list[list[int]], greedy_prompt: int, greedy_tokens: int) -> _Scores:
    from membound.sampling_params import SamplingParams

    score = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1)
    outs = llm.generate([{"prompt_token_ids": w} for w in windows], score, use_tqdm=False)
    nll: list[float] = []
    top1: list[int] = []
    for w, out in zip(windows, outs, strict=True):
        for tok, entry in zip(w[1:], out.prompt_logprobs[1:], strict=True):
            nll.append(-entry[tok])
            top1.append(max(entry, key=entry.__getitem__))
    greedy = SamplingParams(temperature=0, max_tokens=greedy_tokens, ignore_eos=True)
    prompts = [{"prompt_token_ids": w[:greedy_prompt]} for w in windows]
    gen = llm.generate(prompts, greedy, use_tqdm=False)
    return _Scores(nll, top1, [list(o.outputs[0].token_ids) for o in gen])


def kv_cache_compare(
    model: str, token_ids: Sequence[int], kv_cache_dtype: str, *, window: int = 512,
    max_num_batched_tokens: int = 64, greedy_prompt: int = 64, greedy_tokens: int = 32,
    **engine_kwargs: Any,
) -> KVCompareResult:
    """Score ``token_ids`` in windows with the model-dtype KV cache and with
    ``kv_cache_dtype``; both engines chunk prefill by ``max_num_batched_tokens``."""
    from membound import LLM

    greedy_prompt = min(greedy_prompt, window // 2)
    windows = [list(token_ids[i : i + window]) for i in range(0, len(token_ids), window)]
    windows = [w for w in windows if len(w) > greedy_prompt]
    if not windows:
        raise ValueError(f"the text has fewer than {greedy_prompt + 1} tokens; nothing to score")
    kw = dict(engine_kwargs, max_model_len=window + greedy_tokens, enable_prefix_caching=False,
              max_num_batched_tokens=max_num_batched_tokens, enable_chunked_prefill=True)
    scores = []
    for dtype in ("auto", kv_cache_dtype):
        llm = LLM(model, kv_cache_dtype=dtype, **kw)
        try:
            scores.append(_score(llm, windows, greedy_prompt, greedy_tokens))
        finally:
            llm.shutdown()
    ref, quant = scores
    n = len(ref.nll)
    same = [sum(a == b for a, b in zip(r, q, strict=True)) for r, q in zip(ref.greedy, quant.greedy, strict=True)]  # fmt: skip
    prefix = [next((i for i, (a, b) in enumerate(zip(r, q, strict=True)) if a != b), len(r))
              for r, q in zip(ref.greedy, quant.greedy, strict=True)]  # fmt: skip
    ppl_ref, ppl_q = math.exp(sum(ref.nll) / n), math.exp(sum(quant.nll) / n)
    total = sum(len(g) for g in ref.greedy)
    return KVCompareResult(
        num_tokens=n, kv_cache_dtype=kv_cache_dtype, perplexity_reference=ppl_ref,
        perplexity_quantized=ppl_q, perplexity_change=ppl_q / ppl_ref - 1.0,
        top1_agreement=sum(a == b for a, b in zip(ref.top1, quant.top1, strict=True)) / n,
        greedy_tokens=total, greedy_agreement=sum(same) / total,
        greedy_identical_prefix=sum(prefix) / len(prefix), window=window,
        max_num_batched_tokens=max_num_batched_tokens,
    )
