"""Greedy output is identical however the work is scheduled: alone or in a batch, chunked
or not, with or without preemption. Block-pool integrity is checked after every step and
every block is free at the end."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from membound.engine.engine_args import EngineArgs
from membound.engine.llm_engine import LLMEngine
from membound.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def prompts(n: int = 6, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, 300) for _ in range(rng.randint(3, 60))] for _ in range(n)]


def engine(folder: Path, **kw: Any) -> LLMEngine:
    return LLMEngine.from_engine_args(EngineArgs(model=str(folder), block_size=4, **{"dtype": "float32", **kw}))


def run(
    eng: LLMEngine,
    batch: list[list[int]],
    params: SamplingParams | list[SamplingParams] = GREEDY,
) -> list[list[int]]:
    """Run a batch to the end, checking integrity after every step; every block must be
    free at the end. ``params``: one for all prompts, or one per prompt."""
    per_prompt = params if isinstance(params, list) else [params] * len(batch)
    ids = []
    for p, sp in zip(batch, per_prompt):
        rid = eng.new_request_id()
        ids.append(rid)
        eng.add_request(rid, p, sp)
    done: dict[str, list[int]] = {}
    steps = 0
    while eng.has_unfinished_requests():
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
        eng.scheduler.check_integrity()
        steps += 1
        assert steps < 5000
    assert eng.kv_manager.pool.num_free_blocks == eng.kv_manager.num_blocks
    assert not eng.kv_manager.req_to_blocks
    return [done[r] for r in ids]


@pytest.fixture(scope="module")
def reference(tiny_llama: Path) -> list[list[int]]:
    eng = engine(tiny_llama)
    return [run(eng, [p])[0] for p in prompts()]


def test_batched_equals_one_at_a_time(tiny_llama: Path, reference: list[list[int]]) -> None:
    assert run(engine(tiny_llama), prompts()) == reference


def test_chunked_prefill_on_and_off(tiny_llama: Path, reference: list[list[int]]) -> None:
    small_chunks = engine(tiny_llama, max_num_batched_tokens=7)
    assert run(small_chunks, prompts()) == reference
    unchunked = engine(tiny_llama, enable_chunked_prefill=False, max_num_batched_tokens=256)
    assert run(unchunked, prompts()) == reference


def test_forced_preemption_identical(tiny_llama: Path, reference: list[list[int]]) -> None:
    eng = engine(tiny_llama, num_kv_blocks=28, max_num_batched_tokens=32)
    assert run(eng, prompts()) == reference
    assert eng.scheduler.num_preemptions > 0


def test_seeded_sampling_survives_preemption(tiny_llama: Path) -> None:
    params = [SamplingParams(temperature=1.0, top_k=50, seed=i, max_tokens=24, ignore_eos=True)
              for i in range(6)]

    roomy = run(engine(tiny_llama), prompts(), params)
    tight_engine = engine(tiny_llama, num_kv_blocks=28, max_num_batched_tokens=32)
    assert run(tight_engine, prompts(), params) == roomy
    assert tight_engine.scheduler.num_preemptions > 0
