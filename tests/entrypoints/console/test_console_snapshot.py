"""engine/kv_snapshot.py against the KV manager it reads, and
AsyncLLMEngine.call_on_engine_thread (the thread-safe way the dashboard takes it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from async_threads import run_in_own_thread
from membound.engine.async_engine import AsyncLLMEngine, EngineDeadError
from membound.engine.engine_args import EngineArgs
from membound.engine.kv_snapshot import CACHED, FREE, EngineSnapshot, take_snapshot
from membound.engine.llm_engine import LLMEngine
from membound.sampling_params import SamplingParams

PROMPT = list(range(10, 30))  # 20 tokens = 5 full blocks of 4
PARAMS = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


def _engine(model: Path, **kwargs: object) -> LLMEngine:
    args = EngineArgs(model=str(model), max_model_len=64, block_size=4, num_kv_blocks=40,
                      **kwargs)  # type: ignore[arg-type]
    return LLMEngine.from_engine_args(args)


def _check_against_manager(snap: EngineSnapshot, engine: LLMEngine) -> None:
    kv = engine.kv_manager
    assert snap.num_blocks == kv.pool.num_blocks and snap.block_size == kv.block_size
    holders: dict[int, list[str]] = {}
    for rid, table in kv.req_to_blocks.items():
        for b in table:
            holders.setdefault(b, []).append(rid)
    for block_id, code in enumerate(snap.blocks):
        if block_id in holders:
            assert code >= 0 and snap.owners[code] in holders[block_id]
        elif kv.pool.block_hash[block_id] is not None:
            assert code == CACHED
        else:
            assert code == FREE
    assert list(snap.shared) == sorted(b for b, h in holders.items() if len(h) > 1)
    assert snap.num_in_use == len(holders)
    assert snap.num_free + snap.num_cached_evictable + snap.num_in_use == snap.num_blocks


def test_snapshot_of_shared_prefix_and_of_the_end(tiny_llama: Path) -> None:
    engine = _engine(tiny_llama)
    engine.add_request("a", PROMPT, PARAMS)
    engine.step()  # a's prompt is computed and its full blocks cached
    engine.add_request("b", PROMPT, PARAMS)
    engine.step()  # b takes a's cached prefix
    snap = take_snapshot(engine)
    _check_against_manager(snap, engine)
    assert {r.request_id for r in snap.running} == {"a", "b"}
    assert set(snap.owners) == {"a", "b"} and len(snap.shared) >= 4
    row = {r.request_id: r for r in snap.running}["a"]
    assert row.status == "running" and row.num_prompt_tokens == 20
    assert row.num_blocks == len(engine.kv_manager.req_to_blocks["a"])
    assert snap.memory["num_blocks"] == 40 and snap.stats.num_running == 2
    while engine.has_unfinished_requests():
        engine.step()
        _check_against_manager(take_snapshot(engine), engine)
    end = take_snapshot(engine)
    assert end.num_in_use == 0 and end.owners == () and end.shared == ()
    assert end.num_cached_evictable > 0  # prefix caching keeps the finished blocks, evictable


def test_snapshot_lists_waiting_requests_in_queue_order(tiny_llama: Path) -> None:
    engine = _engine(tiny_llama, max_num_seqs=1, enable_prefix_caching=False)
    for rid in ("r0", "r1", "r2"):
        engine.add_request(rid, PROMPT, PARAMS)
    engine.step()
    snap = take_snapshot(engine)
    _check_against_manager(snap, engine)
    assert [r.request_id for r in snap.running] == ["r0"]
    assert [r.request_id for r in snap.waiting] == ["r1", "r2"]
    assert all(r.status == "waiting" and r.num_blocks == 0 for r in snap.waiting)
    assert snap.num_cached_evictable == 0  # no prefix caching: nothing is kept


def test_call_on_engine_thread(tiny_llama: Path) -> None:
    async def scenario() -> None:
        engine = AsyncLLMEngine(_engine(tiny_llama))
        with pytest.raises(EngineDeadError):
            await engine.call_on_engine_thread(take_snapshot)  # not started
        await engine.start()
        try:
            stream = await engine.add_request("x", PROMPT, PARAMS)
            snap = await engine.call_on_engine_thread(take_snapshot)
            assert snap.num_blocks == 40
            with pytest.raises(ZeroDivisionError):
                await engine.call_on_engine_thread(lambda e: 1 / 0)
            async for _ in stream:  # the loop is still serving after fn raised
                pass
            assert (await engine.call_on_engine_thread(take_snapshot)).num_in_use == 0
        finally:
            await engine.shutdown()
        with pytest.raises(EngineDeadError):
            await engine.call_on_engine_thread(take_snapshot)

    run_in_own_thread(scenario)
