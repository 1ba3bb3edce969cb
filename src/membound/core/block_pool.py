"""BlockPool: the KV cache's blocks, their reference counts and the free queue.

The free queue is an insertion-ordered dict used as an O(1) LRU: blocks are taken from its
head and returned to its tail. A block is either in the free queue (ref_cnt == 0) or held by
at least one request (ref_cnt > 0), never both; ``check_integrity`` asserts exactly that.
"""

from __future__ import annotations

from collections import OrderedDict


class OutOfBlocksError(RuntimeError):
    pass


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.ref_cnt: list[int] = [0] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def allocate(self, n: int) -> list[int]:
        """Take ``n`` blocks from the head of the free queue (least recently freed first)."""
        if n > len(self._free):
            raise OutOfBlocksError(f"asked for {n} blocks, {len(self._free)} free")
        blocks = []
        for _ in range(n):
            block_id, _ = self._free.popitem(last=False)
            self.ref_cnt[block_id] = 1
            blocks.append(block_id)
        return blocks

    def free(self, block_ids: list[int]) -> None:
        """Drop one reference to each block; blocks reaching zero go to the free queue's tail.

        Callers pass blocks in the order they should be reused (e.g. a request's blocks in
        reverse, so its deepest blocks are reused first)."""
        for block_id in block_ids:
            if self.ref_cnt[block_id] <= 0:
                raise RuntimeError(f"block {block_id} freed while not held (double free)")
            self.ref_cnt[block_id] -= 1
            if self.ref_cnt[block_id] == 0:
                self._free[block_id] = None

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
        assert len(self._free) + sum(1 for c in self.ref_cnt if c > 0) == self.num_blocks
