"""The scheduler on its own, driven by fabricated runner outputs (no model, no torch)."""

from __future__ import annotations

import pytest

from membound.config import SchedulerConfig
from membound.core.kv_cache_manager import KVCacheManager
from membound.core.outputs import ModelRunnerOutput, SchedulerOutput
from membound.core.request import Request, RequestStatus
from membound.core.scheduler import RequestRejectedError, Scheduler
from membound.sampling_params import SamplingParams


def make(num_blocks: int = 64, block_size: int = 4, budget: int = 16, max_seqs: int = 8,
         max_len: int = 128, chunked: bool = True) -> Scheduler:
    cfg = SchedulerConfig(max_len, max_seqs, budget, chunked)
    return Scheduler(cfg, KVCacheManager(num_blocks, block_size))


def req(rid: str, n_prompt: int, max_tokens: int = 4, arrival: float = 0.0,
        priority: int = 0) -> Request:
    return Request(rid, list(range(1, n_prompt + 1)), SamplingParams(max_tokens=max_tokens,
                   ignore_eos=True), (0,), arrival_time=arrival, priority=priority)


def fake_run(out: SchedulerOutput, token: int = 7) -> ModelRunnerOutput:
    return ModelRunnerOutput(sampled_token_ids={c.req_id: token for c in out.chunks if c.sample})


def run_to_end(s: Scheduler, max_steps: int = 1000) -> list[SchedulerOutput]:
    steps = []
    while s.has_unfinished():
        out = s.schedule()
        s.update_from_output(out, fake_run(out))
        s.check_integrity()
        steps.append(out)
        assert len(steps) < max_steps
    return steps


def test_token_budget_and_chunked_prefill() -> None:
    s = make(budget=16)
    s.add_request(req("a", 40))
    first = s.schedule()
    assert [len(c.token_ids) for c in first.chunks] == [16]
    assert not first.chunks[0].sample
    s.update_from_output(first, fake_run(first))
    second = s.schedule()
    assert second.chunks[0].num_computed_tokens == 16
    s.update_from_output(second, fake_run(second))
    third = s.schedule()
    assert len(third.chunks[0].token_ids) == 8 and third.chunks[0].sample


def test_decodes_and_prefills_share_a_step() -> None:
    s = make(budget=16)
    s.add_request(req("a", 3, max_tokens=10))
    out = s.schedule()
    s.update_from_output(out, fake_run(out))
    s.add_request(req("b", 30, arrival=1.0))
    out = s.schedule()
    sizes = {c.req_id: len(c.token_ids) for c in out.chunks}
    assert sizes == {"a": 1, "b": 15}
    assert sum(sizes.values()) <= 16


def test_no_chunking_waits_for_whole_prompt() -> None:
    s = make(budget=32, chunked=False, max_len=32)
    s.add_request(req("a", 20))
    s.add_request(req("b", 20, arrival=1.0))
    out = s.schedule()
    assert [c.req_id for c in out.chunks] == ["a"]  # b would not fit whole


def test_max_num_seqs_caps_running() -> None:
    s = make(max_seqs=2, budget=100)
    for i in range(5):
        s.add_request(req(str(i), 3, arrival=float(i)))
    out = s.schedule()
    assert len(out.chunks) == 2 and len(s.running) == 2


def test_preemption_frees_blocks_and_resumes() -> None:
    s = make(num_blocks=6, block_size=4, budget=64)
    s.add_request(req("old", 8, max_tokens=12, arrival=0.0))
    s.add_request(req("new", 8, max_tokens=12, arrival=1.0))
    steps = run_to_end(s)
    preempted = set().union(*(o.preempted_req_ids for o in steps))
    assert preempted == {"new"}  # the latest arrival is the victim
    assert s.kv.pool.num_free_blocks == 6
    assert s.num_preemptions >= 1


def test_priority_beats_arrival_for_victim_choice() -> None:
    s = make(num_blocks=6, block_size=4, budget=64)
    s.add_request(req("low", 8, max_tokens=12, arrival=0.0, priority=5))
    s.add_request(req("high", 8, max_tokens=12, arrival=1.0, priority=0))
    steps = run_to_end(s)
    preempted = set().union(*(o.preempted_req_ids for o in steps))
    assert "low" in preempted and "high" not in preempted


def test_rejects_requests_that_can_never_fit() -> None:
    s = make(num_blocks=4, block_size=4, max_len=64)
    with pytest.raises(RequestRejectedError, match="maximum context length is 64 tokens"):
        s.add_request(req("long", 64))
    with pytest.raises(RequestRejectedError, match="whole KV cache holds only 16"):
        s.add_request(req("big", 20))
    with pytest.raises(RequestRejectedError, match="empty"):
        s.add_request(Request("e", [], SamplingParams()))
    assert not s.has_unfinished()


def test_generation_is_capped_by_cache_capacity() -> None:
    """A request that would outgrow the whole cache ends with 'length' instead of
    preempting itself forever."""
    s = make(num_blocks=3, block_size=4, max_len=64)
    r = req("r", 5, max_tokens=100)
    s.add_request(r)
    run_to_end(s)
    assert r.status is RequestStatus.FINISHED_LENGTH
    assert r.num_tokens == 12


def test_finish_from_outside_frees_blocks() -> None:
    s = make()
    s.add_request(req("a", 10, max_tokens=50))
    out = s.schedule()
    s.update_from_output(out, fake_run(out))
    s.finish_requests(["a"], RequestStatus.FINISHED_ABORTED)
    s.check_integrity()
    assert s.kv.pool.num_free_blocks == 64
    assert "a" in s.schedule().finished_req_ids  # the runner is told to drop its state


def test_stop_token_and_eos_respect_min_tokens() -> None:
    s = make()
    r = Request("a", [1, 2, 3], SamplingParams(max_tokens=10, min_tokens=2), (7,))
    s.add_request(r)
    out = s.schedule()
    s.update_from_output(out, fake_run(out, token=7))  # EOS before min_tokens: ignored
    assert not r.is_finished
    out = s.schedule()
    res = s.update_from_output(out, fake_run(out, token=7))
    assert r.status is RequestStatus.FINISHED_STOPPED and res[0].finish_reason == "stop"
