"""EngineSnapshot: a read-only picture of the scheduler queues and every KV block, for the
console's dashboard and for scripts.

```
blocks[i] = FREE (-1)     ref count 0, no cached prefix: nothing in it worth keeping
          = CACHED (-2)   ref count 0 but indexed by the prefix cache: reusable by a prefix hit
                          until it is taken for new data (evictable)
          = k >= 0        in use; owners[k] is the first request in scheduler order holding it
                          (shared[] lists blocks held by more than one request: prefix sharing)
```

``take_snapshot`` reads the LLMEngine, which is not thread-safe: call it on the engine thread
(``AsyncLLMEngine.call_on_engine_thread(take_snapshot)``) or where nothing else steps the
engine. It costs O(num_blocks + block-table entries) and changes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from membound.core.request import Request
from membound.engine.stats import EngineStats

if TYPE_CHECKING:
    from membound.engine.llm_engine import LLMEngine

FREE = -1
CACHED = -2


@dataclass(frozen=True)
class RequestRow:
    request_id: str
    status: str  # RequestStatus value: waiting, running, preempted, swapped
    num_prompt_tokens: int
    num_output_tokens: int
    num_computed_tokens: int  # tokens whose K/V is in the cache
    num_blocks: int  # GPU KV blocks held
    num_cpu_blocks: int  # blocks swapped out to CPU memory
    num_preemptions: int


@dataclass(frozen=True)
class EngineSnapshot:
    running: tuple[RequestRow, ...]
    waiting: tuple[RequestRow, ...]  # in queue order
    block_size: int
    blocks: tuple[int, ...]  # one code per KV block, see the module docstring
    owners: tuple[str, ...]  # request ids that blocks[] indexes
    shared: tuple[int, ...]  # block ids held by more than one request
    memory: dict[str, Any]  # the engine's MemoryReport as a dict (bytes)
    stats: EngineStats

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        return sum(1 for b in self.blocks if b == FREE)

    @property
    def num_cached_evictable(self) -> int:
        return sum(1 for b in self.blocks if b == CACHED)

    @property
    def num_in_use(self) -> int:
        return sum(1 for b in self.blocks if b >= 0)


def _row(request: Request, engine: LLMEngine) -> RequestRow:
    kv = engine.kv_manager
    rid = request.request_id
    return RequestRow(
        request_id=rid,
        status=request.status.value,
        num_prompt_tokens=request.num_prompt_tokens,
        num_output_tokens=request.num_output_tokens,
        num_computed_tokens=request.num_computed_tokens,
        num_blocks=len(kv.req_to_blocks.get(rid, ())),
        num_cpu_blocks=len(kv.req_to_cpu_blocks.get(rid, ())),
        num_preemptions=request.num_preemptions,
    )


def take_snapshot(engine: LLMEngine) -> EngineSnapshot:
    """The engine's queues and KV block map right now (call on the engine thread)."""
    sched, kv = engine.scheduler, engine.kv_manager
    pool = kv.pool
    running = tuple(_row(r, engine) for r in sched.running)
    waiting = tuple(_row(r, engine) for r in sched.waiting)
    blocks = [FREE] * pool.num_blocks
    for block_id in range(pool.num_blocks):
        if pool.ref_cnt[block_id] == 0 and pool.block_hash[block_id] is not None:
            blocks[block_id] = CACHED
    # Scheduler order first (running, then waiting), then any other holder.
    order = [r.request_id for r in sched.running] + [r.request_id for r in sched.waiting]
    seen = set(order)
    order += [rid for rid in kv.req_to_blocks if rid not in seen]
    owners: list[str] = []
    holders: dict[int, int] = {}
    for rid in order:
        table = kv.req_to_blocks.get(rid)
        if not table:
            continue
        owners.append(rid)
        k = len(owners) - 1
        for block_id in table:
            holders[block_id] = holders.get(block_id, 0) + 1
            if blocks[block_id] < 0:
                blocks[block_id] = k
    return EngineSnapshot(
        running=running,
        waiting=waiting,
        block_size=kv.block_size,
        blocks=tuple(blocks),
        owners=tuple(owners),
        shared=tuple(sorted(b for b, n in holders.items() if n > 1)),
        memory=asdict(engine.info.memory_report),
        stats=engine.stats(),
    )
