"""TP=2 (two processes, gloo on CPU) gives TP=1's greedy tokens, and logprobs within 1e-4,
for each model shape that shards differently: a KV head replicated past TP (kv_heads=1 <
TP=2, head_dim 24), tied vocab-parallel embeddings with a padded vocab, MoE with every
expert sliced over the ranks (plus a shared expert and a dense layer), and MoE with expert
parallelism. Each case spawns one rank (about 2 s)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tp_testing import assert_same_greedy, generate

from tiny_models import make_checkpoint

CASES = {
    "kv1_replicated": ("llama_head_dim", {}, {}),  # 1 KV head on both ranks, head_dim 24
    "tied_vocab_parallel": ("llama3_tied", {"vocab_size": 321}, {}),  # 161 + 160 (+1 pad)
    "moe_sliced": ("qwen2_moe", {}, {}),
    "moe_expert_parallel": ("qwen3_moe", {}, {"enable_expert_parallel": True}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_tp1(tmp_path: Path, case: str) -> None:
    family, overrides, engine_kwargs = CASES[case]
    folder = make_checkpoint(tmp_path / case, family, seed=12, **overrides)
    ref = generate(folder)
    got = generate(folder, tensor_parallel_size=2, **engine_kwargs)
    assert_same_greedy(ref, got)
    assert not torch.distributed.is_initialized()  # shut down cleanly, ready for the next
