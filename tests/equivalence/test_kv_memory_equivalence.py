"""Greedy outputs are identical with prefix caching on and off, and with preemption by
recompute, by swap, and none (tiny pools force it)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from test_scheduling_equivalence import engine, run

from membound.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)


def shared_prefix_prompts(n: int = 6) -> list[list[int]]:
    rng = random.Random(5)
    system = [rng.randrange(5, 300) for _ in range(37)]
    return [system + [rng.randrange(5, 300) for _ in range(rng.randint(1, 12))] for _ in range(n)]


@pytest.fixture(scope="module")
def no_cache_reference(tiny_llama: Path) -> list[list[int]]:
    eng = engine(tiny_llama, enable_prefix_caching=False)
    return [run(eng, [p], GREEDY)[0] for p in shared_prefix_prompts()]


def test_prefix_caching_on_equals_off(tiny_llama: Path, no_cache_reference: list[list[int]]) -> None:
    eng = engine(tiny_llama, enable_prefix_caching=True)
    first = run(eng, shared_prefix_prompts()[:1], GREEDY)  # warm the cache
    assert first == no_cache_reference[:1]
    assert run(eng, shared_prefix_prompts(), GREEDY) == no_cache_reference
    stats = eng.stats()
    assert stats.prefix_cache_hits_total >= 36 * 5 and stats.prefix_cache_hit_rate > 0.5


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_modes_identical(
    tiny_llama: Path, no_cache_reference: list[list[int]], mode: str
) -> None:
    eng = engine(tiny_llama, num_kv_blocks=40, max_num_batched_tokens=48, preemption_mode=mode,
                 swap_space=0.01)
    assert run(eng, shared_prefix_prompts(), GREEDY) == no_cache_reference
    stats = eng.stats()
    assert stats.num_preemptions > 0
    if mode == "swap":
        assert stats.num_swaps_out > 0 and stats.num_swaps_in == stats.num_swaps_out
    else:
        assert stats.num_swaps_out == 0


def test_swap_preserves_seeded_sampling(tiny_llama: Path) -> None:
    params = [SamplingParams(temperature=0.8, seed=i, max_tokens=20, ignore_eos=True)
              for i in range(6)]

    def go(**kw: object) -> list[list[int]]:
        return run(engine(tiny_llama, **kw), shared_prefix_prompts(), params)

    assert go(num_kv_blocks=40, max_num_batched_tokens=48, preemption_mode="swap",
              swap_space=0.01) == go()


def test_memory_report_on_cpu(tiny_llama: Path) -> None:
    eng = engine(tiny_llama, kv_cache_memory_bytes=1 << 20, max_model_len=128)
    info = eng.info
    rep = info.memory_report
    per_block = info.bytes_per_block
    assert rep.num_blocks == (1 << 20) // per_block and rep.kv_bytes == rep.num_blocks * per_block
    assert (info.num_blocks, info.kv_bytes) == (rep.num_blocks, rep.kv_bytes)
    model = eng.executor.driver.model
    assert rep.weights_bytes == info.weights_bytes == sum(p.numel() * 4 for p in model.parameters())
    assert (info.dtype, info.weight_precision, info.kv_precision) == ("float32",) * 3
    assert info.kernel_backend == "cpu" and info.tensor_parallel_size == 1
    text = rep.format()
    assert "activations not measured on CPU" in text
    assert f"{rep.num_blocks} blocks = {rep.num_blocks * 4} tokens" in text
    assert "concurrent sequences at max_model_len=128" in text


def test_too_small_cache_names_the_knobs(tiny_llama: Path) -> None:
    with pytest.raises(ValueError, match=r"max_model_len=256 needs .* GiB of KV cache.*lower "
                       r"max_model_len"):
        engine(tiny_llama, kv_cache_memory_bytes=4096, max_model_len=256)
