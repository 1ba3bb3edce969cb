"""AsyncLLMEngine.build: the engine is built on the thread that steps it (one OpenMP thread
pool in the process, engine/async_engine.py), build errors reach the caller, and an engine
built but never started lets its thread end."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from async_threads import run_in_own_thread
from membound.engine.async_engine import AsyncLLMEngine
from membound.engine.engine_args import EngineArgs
from membound.engine.llm_engine import LLMEngine
from membound.sampling_params import SamplingParams

PARAMS = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)


def _factory(model: Path, built_on: list[threading.Thread]):
    def build() -> LLMEngine:
        built_on.append(threading.current_thread())
        return LLMEngine.from_engine_args(EngineArgs(model=str(model), max_model_len=64,
                                                     block_size=4, num_kv_blocks=40))
    return build


def test_build_steps_on_the_thread_that_built(tiny_llama: Path) -> None:
    built_on: list[threading.Thread] = []
    engine = AsyncLLMEngine.build(_factory(tiny_llama, built_on))
    assert len(built_on) == 1 and built_on[0] is not threading.current_thread()

    async def scenario() -> None:
        await engine.start()
        try:
            stepped_on = await engine.call_on_engine_thread(lambda e: threading.current_thread())
            assert stepped_on is built_on[0]
            stream = await engine.add_request("r", list(range(10, 30)), PARAMS)
            outputs = [out async for out in stream]
            assert outputs[-1].finished and len(outputs[-1].outputs[0].token_ids) == 4
        finally:
            await engine.shutdown()
        assert not built_on[0].is_alive()

    run_in_own_thread(scenario)


def test_build_raises_the_factory_error() -> None:
    def broken() -> LLMEngine:
        raise ValueError("no such model: /nowhere")

    with pytest.raises(ValueError, match="no such model"):
        AsyncLLMEngine.build(broken)


def test_built_but_never_started_ends_its_thread(tiny_llama: Path) -> None:
    built_on: list[threading.Thread] = []
    engine = AsyncLLMEngine.build(_factory(tiny_llama, built_on))
    assert built_on[0].is_alive()  # waiting for the loop it will run

    async def scenario() -> None:
        await engine.shutdown()

    run_in_own_thread(scenario)
    built_on[0].join(timeout=10)
    assert not built_on[0].is_alive() and not engine.is_running
