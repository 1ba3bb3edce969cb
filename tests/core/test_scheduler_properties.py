"""Property-based: random add / step / abort workloads keep every invariant, and leak no
block, with prefix caching, chunked prefill and both preemption modes."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from membound.config import SchedulerConfig
from membound.core.kv_cache_manager import KVCacheManager
from membound.core.outputs import ModelRunnerOutput
from membound.core.request import Request, RequestStatus
from membound.core.scheduler import RequestRejectedError, Scheduler
from membound.sampling_params import SamplingParams

op = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 40), st.integers(1, 12), st.integers(0, 3)),
    st.tuples(st.just("step"), st.integers(1, 3)),
    st.tuples(st.just("abort"), st.integers(0, 30)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(op, min_size=1, max_size=40),
    num_blocks=st.integers(4, 24),
    block_size=st.sampled_from([2, 4, 8]),
    budget=st.integers(4, 64),
    caching=st.booleans(),
    mode=st.sampled_from(["recompute", "swap"]),
    cpu_blocks=st.integers(0, 16),
    chunked=st.booleans(),
)
def test_random_workloads_keep_invariants(
    ops: list[tuple], num_blocks: int, block_size: int, budget: int, caching: bool, mode: str,
    cpu_blocks: int, chunked: bool,
) -> None:
    max_len = 64
    if not chunked:
        budget = max(budget, max_len)
    sched = Scheduler(
        SchedulerConfig(max_len, 6, budget, chunked, mode),
        KVCacheManager(num_blocks, block_size, caching, None, cpu_blocks),
    )
    added: list[str] = []
    step_count = 0

    def step() -> None:
        nonlocal step_count
        out = sched.schedule()
        assert not (out.blocks_to_swap_in and out.blocks_to_swap_out)
        assert out.total_num_scheduled_tokens <= budget
        sampled = {c.req_id: 3 + (step_count % 7) for c in out.chunks if c.sample}
        sched.update_from_output(out, ModelRunnerOutput(sampled_token_ids=sampled))
        sched.check_integrity()
        step_count += 1

    for item in ops:
        if item[0] == "add":
            _, n_prompt, max_tokens, prefix_kind = item
            prompt = [7] * (prefix_kind * 5) + list(range(10, 10 + n_prompt))
            r = Request(f"r{len(added)}", prompt[:60], SamplingParams(max_tokens=max_tokens,
                        ignore_eos=True), (0,))
            try:
                sched.add_request(r)
                added.append(r.request_id)
            except RequestRejectedError:
                pass
        elif item[0] == "step":
            for _ in range(item[1]):
                step()
        elif added:
            sched.finish_requests([added[item[1] % len(added)]], RequestStatus.FINISHED_ABORTED)
            sched.check_integrity()
    guard = 0
    while sched.has_unfinished():
        step()
        guard += 1
        assert guard < 2000, "the workload never drained"
    kv = sched.kv
    assert kv.pool.num_free_blocks == kv.num_blocks and not kv.req_to_blocks
    assert kv.cpu_pool is None or kv.cpu_pool.num_free_blocks == kv.cpu_pool.num_blocks
    assert not kv.req_to_cpu_blocks
