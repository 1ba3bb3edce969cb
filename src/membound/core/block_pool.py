"""BlockPool: the KV cache's blocks, their reference counts, the prefix-cache index and the
free blocks.

Free blocks (ref_cnt == 0) include cached ones (those with a hash), which stay reusable by a
prefix hit until the block is taken for new data, at which point its hash is dropped
(eviction). They sit in two tiers:

- **recent**: the ``recent_window`` most recently freed blocks, an insertion-ordered dict
  used as an O(1) LRU (freed to its tail; the oldest leaves its head for the cold tier when
  the window is full);
- **cold**: every other free block (never used, or freed before all the recent ones), taken
  lowest id first (a min-heap).

Allocation takes cold blocks first, then the recent tier's head. Eviction is LRU at the
window's grain: a block freed more recently than the window's oldest is never evicted before
a cold one. Among cold blocks the lowest ids go first, so the blocks in use stay packed at
the low end of the cache instead of drifting over all of it as an LRU queue recycles them:
a decode step reads every running sequence's blocks, and a compact working set measured
faster on the CPU (docs/benchmarks.md, run 9). Invariants (``check_integrity``): a block is
free (in exactly one tier) iff its ref count is 0; the hash index maps each hash to one
block whose recorded hash is that hash.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict

from membound.core.block_hash import BlockHash


class OutOfBlocksError(RuntimeError):
    pass


def default_recent_window(num_blocks: int) -> int:
    """The recent tier's size: an eighth of the pool (at least one block)."""
    return max(1, num_blocks // 8)


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool = False,
                 recent_window: int | None = None) -> None:  # fmt: skip
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {num_blocks}")
        window = default_recent_window(num_blocks) if recent_window is None else recent_window
        if window < 1:
            raise ValueError(f"recent_window must be at least 1 block, got {window}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.recent_window = window
        self.ref_cnt: list[int] = [0] * num_blocks
        self.block_hash: list[BlockHash | None] = [None] * num_blocks
        self.cached: dict[BlockHash, int] = {}
        self._recent: OrderedDict[int, None] = OrderedDict()
        # the cold tier: a min-heap of ids, entries stale once their block left the tier
        # (is_cold says which are live), rebuilt when stale entries outnumber live ones
        self._cold_heap: list[int] = list(range(num_blocks))
        self._is_cold: list[bool] = [True] * num_blocks
        self._num_cold = num_blocks
        self.num_evictions = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self._recent) + self._num_cold

    @property
    def num_cached_blocks(self) -> int:
        return len(self.cached)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def allocate(self, n: int) -> list[int]:
        """Take ``n`` free blocks, the cold tier's lowest ids first, then the recent tier's
        least recently freed, evicting their cached contents."""
        if n > self.num_free_blocks:
            raise OutOfBlocksError(f"asked for {n} blocks, {self.num_free_blocks} free")
        blocks = []
        for _ in range(n):
            block_id = self._pop_cold() if self._num_cold else self._recent.popitem(last=False)[0]
            self._evict(block_id)
            self.ref_cnt[block_id] = 1
            blocks.append(block_id)
        return blocks

    def _pop_cold(self) -> int:
        while True:
            block_id = heapq.heappop(self._cold_heap)
            if self._is_cold[block_id]:
                self._is_cold[block_id] = False
                self._num_cold -= 1
                return block_id

    def _push_cold(self, block_id: int) -> None:
        self._is_cold[block_id] = True
        self._num_cold += 1
        heapq.heappush(self._cold_heap, block_id)
        if len(self._cold_heap) > 2 * self._num_cold + 64:  # mostly stale: rebuild
            self._cold_heap = [b for b in range(self.num_blocks) if self._is_cold[b]]

    def _take_free(self, block_id: int) -> None:
        """Take a free block out of its tier (a prefix hit's touch)."""
        if self._is_cold[block_id]:
            self._is_cold[block_id] = False  # its heap entry goes stale
            self._num_cold -= 1
        else:
            del self._recent[block_id]

    def _evict(self, block_id: int) -> None:
        h = self.block_hash[block_id]
        if h is not None:
            self.block_hash[block_id] = None
            if self.cached.get(h) == block_id:
                del self.cached[h]
                self.num_evictions += 1

    def free(self, block_ids: list[int]) -> None:
        """Drop one reference to each block; blocks reaching zero go to the recent tier's
        tail (its oldest block moving to the cold tier when the window is full).

        Callers pass blocks in the order they should be evicted (a request's blocks in
        reverse, so its deepest blocks go first)."""
        for block_id in block_ids:
            if self.ref_cnt[block_id] <= 0:
                raise RuntimeError(f"block {block_id} freed while not held (double free)")
            self.ref_cnt[block_id] -= 1
            if self.ref_cnt[block_id] == 0:
                self._recent[block_id] = None
                if len(self._recent) > self.recent_window:
                    self._push_cold(self._recent.popitem(last=False)[0])

    # ---- prefix cache ------------------------------------------------------------------
    def lookup(self, block_hash: BlockHash) -> int | None:
        return self.cached.get(block_hash) if self.enable_caching else None

    def touch(self, block_ids: list[int]) -> None:
        """Take a reference to cached blocks found by a prefix hit."""
        for block_id in block_ids:
            if self.ref_cnt[block_id] == 0:
                self._take_free(block_id)
            self.ref_cnt[block_id] += 1

    def num_touch_from_free(self, block_ids: list[int]) -> int:
        """How many of these blocks a touch would take out of the free queue."""
        return sum(1 for b in block_ids if self.ref_cnt[b] == 0)

    def cache_block(self, block_id: int, block_hash: BlockHash) -> None:
        """Record that a held, full block holds the prefix ``block_hash``. If another block
        already caches the same prefix, the index keeps that one."""
        if not self.enable_caching or self.block_hash[block_id] is not None:
            return
        if block_hash in self.cached:
            return
        self.block_hash[block_id] = block_hash
        self.cached[block_hash] = block_id

    def reset_prefix_cache(self) -> None:
        for h, block_id in list(self.cached.items()):
            self.block_hash[block_id] = None
            del self.cached[h]

    def check_integrity(self, held: dict[int, int] | None = None) -> None:
        """Assert the pool's invariants. ``held`` (block -> number of holders), when given,
        must match the reference counts exactly."""
        for block_id, cnt in enumerate(self.ref_cnt):
            assert cnt >= 0, f"block {block_id} has negative ref count {cnt}"
            tiers = (block_id in self._recent) + self._is_cold[block_id]
            assert tiers == (cnt == 0), (
                f"block {block_id}: ref_cnt={cnt} but in {tiers} free tiers"
            )
            if held is not None:
                assert held.get(block_id, 0) == cnt, (
                    f"block {block_id}: ref_cnt={cnt} but held by {held.get(block_id, 0)} requests"
                )
        for h, block_id in self.cached.items():
            assert self.block_hash[block_id] == h, f"block {block_id}: hash index out of sync"
        assert self._num_cold == sum(self._is_cold), "cold tier count out of sync"
        assert set(self._cold_heap) >= {b for b in range(self.num_blocks) if self._is_cold[b]}
        assert len(self._recent) <= self.recent_window
        assert self.num_free_blocks + sum(1 for c in self.ref_cnt if c > 0) == self.num_blocks
