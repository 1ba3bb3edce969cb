"""BlockPool: the KV cache's blocks, their reference counts, the prefix-cache index and the
free queue.

The free queue is an insertion-ordered dict used as an O(1) LRU: blocks are taken from its
head and returned to its tail. It holds every block with ref_cnt == 0, including cached
blocks (those with a hash), which stay reusable by a prefix hit until the block is taken for
new data, at which point its hash is dropped (eviction). Invariants (``check_integrity``):
a block is in the free queue iff its ref count is 0; the hash index maps each hash to one
block whose recorded hash is that hash.
"""

from __future__ import annotations

from collections import OrderedDict

from membound.core.block_hash import BlockHash


class OutOfBlocksError(RuntimeError):
    pass


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool = False) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.ref_cnt: list[int] = [0] * num_blocks
        self.block_hash: list[BlockHash | None] = [None] * num_blocks
        self.cached: dict[BlockHash, int] = {}
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.num_evictions = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self.cached)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def allocate(self, n: int) -> list[int]:
        """Take ``n`` blocks from the head of the free queue (least recently freed first),
        evicting their cached contents."""
        if n > len(self._free):
            raise OutOfBlocksError(f"asked for {n} blocks, {len(self._free)} free")
        blocks = []
        for _ in range(n):
            block_id, _ = self._free.popitem(last=False)
            self._evict(block_id)
            self.ref_cnt[block_id] = 1
            blocks.append(block_id)
        return blocks

    def _evict(self, block_id: int) -> None:
        h = self.block_hash[block_id]
        if h is not None:
            self.block_hash[block_id] = None
            if self.cached.get(h) == block_id:
                del self.cached[h]
                self.num_evictions += 1

    def free(self, block_ids: list[int]) -> None:
        """Drop one reference to each block; blocks reaching zero go to the free queue's tail.

        Callers pass blocks in the order they should be evicted (a request's blocks in
        reverse, so its deepest blocks go first)."""
        for block_id in block_ids:
            if self.ref_cnt[block_id] <= 0:
                raise RuntimeError(f"block {block_id} freed while not held (double free)")
            self.ref_cnt[block_id] -= 1
            if self.ref_cnt[block_id] == 0:
                self._free[block_id] = None

    # ---- prefix cache ------------------------------------------------------------------
    def lookup(self, block_hash: BlockHash) -> int | None:
        return self.cached.get(block_hash) if self.enable_caching else None

    def touch(self, block_ids: list[int]) -> None:
        """Take a reference to cached blocks found by a prefix hit."""
        for block_id in block_ids:
            if self.ref_cnt[block_id] == 0:
                del self._free[block_id]
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
            in_free = block_id in self._free
            assert in_free == (cnt == 0), (
                f"block {block_id}: ref_cnt={cnt} but {'in' if in_free else 'not in'} free queue"
            )
            if held is not None:
                assert held.get(block_id, 0) == cnt, (
                    f"block {block_id}: ref_cnt={cnt} but held by {held.get(block_id, 0)} requests"
                )
        for h, block_id in self.cached.items():
            assert self.block_hash[block_id] == h, f"block {block_id}: hash index out of sync"
        assert len(self._free) + sum(1 for c in self.ref_cnt if c > 0) == self.num_blocks
