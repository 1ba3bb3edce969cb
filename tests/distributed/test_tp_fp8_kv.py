"""FP8 KV cache under tensor parallelism (TP=2, gloo on CPU): each rank stores its KV heads
in E4M3 and the greedy tokens and logprobs equal TP=1's with the same FP8 cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from tp_testing import assert_same_greedy, generate

from tiny_models import make_checkpoint


@pytest.fixture(scope="module")
def gqa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tp_fp8") / "gqa", "mistral", seed=11)


def test_fp8_kv_cache_tp2_matches_tp1(gqa: Path) -> None:
    ref = generate(gqa, kv_cache_dtype="fp8")
    assert_same_greedy(ref, generate(gqa, kv_cache_dtype="fp8", tensor_parallel_size=2))
