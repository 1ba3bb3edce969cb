"""Every Llama-family variant matches transformers on tiny random checkpoints (fp32):
identical greedy tokens over 32 new tokens, and top-5 logprobs close."""

from __future__ import annotations

from pathlib import Path

import pytest

from membound import LLM, SamplingParams
from tiny_models import FAMILIES, hf_generate_cached, hf_greedy, load_hf, make_checkpoint

PROMPTS = [
    [5, 17, 42, 99, 7, 3, 250, 11],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 60],
]
NEW_TOKENS = 32


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_matches_transformers(tmp_path: Path, family: str) -> None:
    folder = make_checkpoint(tmp_path / family, family, seed=3)
    hf = load_hf(folder)
    llm = LLM(str(folder), block_size=4, max_num_batched_tokens=64, dtype="float32")
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=5)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    for prompt, out in zip(PROMPTS, outs):
        ref_tokens, ref_top = hf_greedy(hf, prompt, NEW_TOKENS)
        got = out.outputs[0]
        assert got.token_ids == ref_tokens, family
        assert got.logprobs is not None and len(got.logprobs) == NEW_TOKENS
        for ours, theirs in zip(got.logprobs, ref_top):
            for token, lp in theirs.items():
                assert token in ours, (family, token)
                assert abs(ours[token] - lp) < 1e-4, (family, token, ours[token], lp)


def test_dynamic_rope_past_original_length(tmp_path: Path) -> None:
    """Dynamic NTK changes the rotary base once a sequence passes the original length
    (64 here). Like transformers' cached generate(), each token is rotated with the base for
    the sequence length at the step that computed it."""
    folder = make_checkpoint(tmp_path / "dyn", "llama_dynamic_rope", seed=4)
    hf = load_hf(folder)
    llm = LLM(str(folder), block_size=8, enable_chunked_prefill=False, dtype="float32")
    prompt = [(i * 7) % 300 + 5 for i in range(70)]  # 70 tokens > 64
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
                       use_tqdm=False)[0]
    assert out.outputs[0].token_ids == hf_generate_cached(hf, prompt, 12)
