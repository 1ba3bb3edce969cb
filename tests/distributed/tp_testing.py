"""Shared helpers for the tensor-parallel tests: tiny checkpoints, TP=1 references and
comparisons of greedy outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from membound import LLM, SamplingParams
from membound.outputs import RequestOutput

PROMPTS = [
    [5, 17, 42, 99, 7, 3, 250, 11],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 60],
    [300, 1, 200, 2, 100],
]
# chunked prefill (budget 16 < the longest prompt), small blocks, a fixed KV budget per rank
ENGINE = {"dtype": "float32", "block_size": 4, "max_num_batched_tokens": 16, "max_model_len": 128,
          "kv_cache_memory_bytes": 1 << 20}


def params() -> list[SamplingParams]:
    """Greedy with top-3 logprobs; one request also asks for prompt logprobs (the LM head
    gathers on every chunk for it)."""
    base = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=3)
    with_prompt = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=3,
                                 prompt_logprobs=2)
    return [base, with_prompt, base]


def generate(folder: Path, **kwargs: Any) -> list[RequestOutput]:
    llm = LLM(str(folder), **ENGINE, **kwargs)
    try:
        return llm.generate(PROMPTS, params(), use_tqdm=False)
    finally:
        llm.shutdown()


def assert_same_greedy(ref: list[RequestOutput], got: list[RequestOutput], tol: float = 1e-4) -> None:
    for r, g in zip(ref, got, strict=True):
        a, b = r.outputs[0], g.outputs[0]
        assert b.token_ids == a.token_ids
        for ours, theirs in zip(b.logprobs, a.logprobs, strict=True):
            assert set(ours) == set(theirs)
            assert all(abs(ours[t] - theirs[t]) < tol for t in theirs)
        if r.prompt_logprobs is not None:
            assert g.prompt_logprobs is not None
            for ours, theirs in zip(g.prompt_logprobs[1:], r.prompt_logprobs[1:], strict=True):
                assert all(abs(ours[t] - theirs[t]) < tol for t in theirs)
