"""ModelRunner.warm_up: the worker runs one largest step at start-up and leaves nothing
behind (no request state, no input-batch slot, no random draw, every KV block free)."""

from __future__ import annotations

from pathlib import Path

import torch

from membound.engine.engine_args import EngineArgs
from membound.engine.llm_engine import LLMEngine
from membound.layers.sampling_metadata import make_generator
from membound.sampling_params import SamplingParams


def _engine(model: Path, **kw) -> LLMEngine:  # type: ignore[no-untyped-def]
    args = EngineArgs(model=str(model), dtype="float32", max_model_len=128, seed=3,
                      skip_tokenizer_init=True, **kw)  # fmt: skip
    return LLMEngine.from_engine_args(args)


def test_start_up_warm_up_leaves_nothing_behind(tiny_llama: Path) -> None:
    eng = _engine(tiny_llama, num_kv_blocks=64, max_num_seqs=8, max_num_batched_tokens=96)
    runner = eng.executor.driver.runner
    assert runner.states == {} and runner.input_batch.slot_of == {}
    assert len(runner.input_batch.free_slots) == 8
    fresh = make_generator(3, torch.device("cpu"))
    assert torch.equal(runner.input_batch.sampling.default_generator.get_state(), fresh.get_state())
    assert eng.kv_manager.pool.num_free_blocks == 64
    eng.add_request("a", list(range(5, 30)), SamplingParams(temperature=0, max_tokens=4))
    while eng.has_unfinished_requests():
        eng.step()
    eng.scheduler.check_integrity()


def test_warm_up_shapes(tiny_llama: Path) -> None:
    eng = _engine(tiny_llama, num_kv_blocks=64, max_num_seqs=8)
    runner = eng.executor.driver.runner
    seen: list[int] = []
    forward = runner.model.forward

    def spy(ids, *a, **kw):  # type: ignore[no-untyped-def]
        seen.append(ids.shape[0])
        return forward(ids, *a, **kw)

    runner.model.forward = spy  # type: ignore[method-assign]
    # 8 requests of 100 // 8 = 12 tokens (one block of 16 each, with the decode token)
    assert runner.warm_up(100, 8, 64) == 8
    assert seen == [96, 8]
    seen.clear()
    # 2 requests of 40 tokens need 3 blocks each (40 + 1 decode token): a 3-block cache
    # runs one of them
    assert runner.warm_up(80, 2, 3) == 1 and seen == [40, 1]
    seen.clear()
    assert runner.warm_up(80, 2, 2) == 0 and seen == []  # not even one fits
    assert runner.states == {} and runner.input_batch.slot_of == {}
