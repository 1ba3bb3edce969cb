"""Token-budget scheduler: continuous batching, chunked prefill, prefix-cache hits,
preemption by recompute or by swap.

Each step spends at most ``max_num_batched_tokens`` tokens on at most ``max_num_seqs``
sequences. Running requests go first (decodes, then unfinished prefill chunks, in arrival
order); waiting requests join while budget and KV blocks remain. When a running request
cannot get a block, the least important running request (highest priority value, then
latest arrival) is preempted: by recompute, its blocks are freed and it is re-queued at the
head of the waiting queue to recompute its KV when it resumes; by swap (when the CPU pool has
room), its blocks are copied to CPU memory and copied back when it resumes. A step that
preempts admits nobody, so swap-outs and swap-ins never share a step.
"""

from __future__ import annotations

from collections import deque

from membound.config import SchedulerConfig
from membound.core.kv_cache_manager import KVCacheManager
from membound.core.outputs import (
    EngineCoreOutput,
    ModelRunnerOutput,
    NewRequestData,
    ScheduledChunk,
    SchedulerOutput,
)
from membound.core.request import Request, RequestStatus


class RequestRejectedError(ValueError):
    """A request that can never be served; the message says why and what to change."""


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_manager: KVCacheManager) -> None:
        self.config = config
        self.kv = kv_manager
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._seen: set[str] = set()  # requests whose NewRequestData went to the runner
        self._finished_ids: set[str] = set()  # finished since the last schedule()
        self.num_preemptions = 0
        self.num_swaps_out = 0
        self.num_swaps_in = 0

    # ---- admission -------------------------------------------------------------------
    def max_total_tokens(self) -> int:
        """Longest sequence that can ever be held: the context limit or the whole cache."""
        return min(self.config.max_model_len, self.kv.capacity_tokens)

    def check_prompt_len(self, n: int) -> None:
        """Raise RequestRejectedError if a prompt of ``n`` tokens can never be served."""
        if n == 0:
            raise RequestRejectedError("the prompt is empty; send at least one token")
        limit = self.config.max_model_len
        if n >= limit:
            raise RequestRejectedError(
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {n} prompt tokens, which leaves no room for output; shorten the "
                "prompt or raise max_model_len"
            )
        if n >= self.kv.capacity_tokens:
            raise RequestRejectedError(
                f"the prompt has {n} tokens but the whole KV cache holds only "
                f"{self.kv.capacity_tokens} ({self.kv.num_blocks} blocks of "
                f"{self.kv.block_size}); shorten the prompt or give the KV cache more memory"
            )

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise RequestRejectedError(f"request id {request.request_id!r} is already in use")
        self.check_prompt_len(request.num_prompt_tokens)
        request.max_total_tokens = self.max_total_tokens()
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        self.waiting.append(request)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- scheduling ------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(finished_req_ids=self._finished_ids)
        self._finished_ids = set()
        budget = self.config.max_num_batched_tokens
        budget = self._schedule_running(out, budget)
        if not out.preempted_req_ids:
            self._schedule_waiting(out, budget)
        return out

    def _num_new_tokens(self, request: Request, budget: int) -> int:
        remaining = request.num_tokens - request.num_computed_tokens
        if remaining > budget and not self.config.enable_chunked_prefill:
            return 0
        return min(remaining, budget)

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            n = self._num_new_tokens(request, budget)
            if n == 0:
                i += 1
                continue
            while not self.kv.allocate_slots(request, n):
                victim = self._pick_victim(i)
                self._preempt(victim, out)
                if victim is request:
                    break
            else:
                out.chunks.append(self._chunk(request, n, out))
                budget -= n
                i += 1
        return budget

    def _pick_victim(self, first_unscheduled: int) -> Request:
        """Among running requests not yet scheduled this step (the current one included),
        the least important: highest priority value, then latest arrival."""
        candidates = self.running[first_unscheduled:]
        return max(candidates, key=lambda r: (r.priority, r.arrival_time))

    def _preempt(self, victim: Request, out: SchedulerOutput) -> None:
        swap = self.config.preemption_mode == "swap" and self.kv.can_swap_out(victim)
        if swap:
            out.blocks_to_swap_out.extend(self.kv.swap_out(victim))
            victim.status = RequestStatus.SWAPPED
            self.num_swaps_out += 1
        else:
            self.kv.free(victim)
            victim.num_computed_tokens = 0
            victim.status = RequestStatus.PREEMPTED
        self.running.remove(victim)
        victim.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(victim)
        out.preempted_req_ids.add(victim.request_id)

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            n = self._admit(request, budget, out)
            if n == 0:
                break
            self.waiting.popleft()
            self.running.append(request)
            request.status = RequestStatus.RUNNING
            out.chunks.append(self._chunk(request, n, out))
            budget -= n

    def _admit(self, request: Request, budget: int, out: SchedulerOutput) -> int:
        """Give a waiting request its KV blocks (swapped back, or a prefix hit plus new
        blocks); returns the tokens it runs this step, 0 if it cannot start."""
        if request.status is RequestStatus.SWAPPED:
            n = self._num_new_tokens(request, budget)
            if n == 0 or not self.kv.can_swap_in(request, n):
                return 0
            out.blocks_to_swap_in.extend(self.kv.swap_in(request))
            ok = self.kv.allocate_slots(request, n)
            assert ok, "can_swap_in guaranteed room"
            self.num_swaps_in += 1
            return n
        assert request.num_computed_tokens == 0
        hits = self.kv.get_computed_blocks(request)
        num_hit_tokens = len(hits) * self.kv.block_size
        remaining = request.num_tokens - num_hit_tokens
        if remaining > budget and not self.config.enable_chunked_prefill:
            return 0
        n = min(remaining, budget)
        if not self.kv.allocate_slots(request, n, hits):
            return 0
        request.num_computed_tokens = num_hit_tokens
        self.kv.record_prefix_lookup(request.num_tokens, num_hit_tokens)
        return n

    def _chunk(self, request: Request, n: int, out: SchedulerOutput) -> ScheduledChunk:
        rid = request.request_id
        if rid not in self._seen:
            self._seen.add(rid)
            out.new_requests.append(
                NewRequestData(
                    rid, request.prompt_token_ids, request.sampling_params, request.eos_token_ids
                )
            )
        start = request.num_computed_tokens
        return ScheduledChunk(
            req_id=rid,
            token_ids=request.all_token_ids[start : start + n],
            num_computed_tokens=start,
            block_table=self.kv.block_table(rid),
            sample=start + n == request.num_tokens,
        )

    # ---- results ---------------------------------------------------------------------
    def update_from_output(
        self, sched: SchedulerOutput, result: ModelRunnerOutput
    ) -> list[EngineCoreOutput]:
        outputs: list[EngineCoreOutput] = []
        for chunk in sched.chunks:
            request = self.requests.get(chunk.req_id)
            if request is None or request.is_finished:
                continue  # aborted while the step ran
            request.num_computed_tokens += chunk.num_scheduled_tokens
            prompt_lp = result.prompt_logprobs.get(chunk.req_id, [])
            if not chunk.sample:
                if prompt_lp:
                    outputs.append(EngineCoreOutput(chunk.req_id, [], prompt_logprobs=prompt_lp))
                continue
            token = result.sampled_token_ids[chunk.req_id]
            request.append_output_token(token)
            status = request.check_stop()
            lp = result.logprobs.get(chunk.req_id)
            out = EngineCoreOutput(
                chunk.req_id,
                [token],
                logprobs=[lp] if lp is not None else [],
                prompt_logprobs=prompt_lp,
            )
            if status is not None:
                self._finish(request, status)
                out.finish_reason = status.value
                out.stop_reason = request.stop_reason
            outputs.append(out)
        return outputs

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> None:
        """Finish requests from outside (stop strings, aborts); frees their blocks now."""
        for rid in request_ids:
            request = self.requests.get(rid)
            if request is not None and not request.is_finished:
                self._finish(request, status)

    def _finish(self, request: Request, status: RequestStatus) -> None:
        request.status = status
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.kv.free(request)
        del self.requests[request.request_id]
        if request.request_id in self._seen:
            self._seen.discard(request.request_id)
            self._finished_ids.add(request.request_id)

    def check_integrity(self) -> None:
        self.kv.check_integrity()
        holders = set(self.kv.req_to_blocks)
        running = {r.request_id for r in self.running}
        assert holders <= running, f"blocks held by non-running requests: {holders - running}"
        assert len(self.running) <= self.config.max_num_seqs
        for r in self.running:
            assert r.num_computed_tokens <= r.num_tokens
