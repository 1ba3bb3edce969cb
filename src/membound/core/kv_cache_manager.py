"""KVCacheManager: request-level block allocation on top of the BlockPool."""

from __future__ import annotations

from membound.core.block_pool import BlockPool
from membound.core.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self.req_to_blocks: dict[str, list[int]] = {}

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def capacity_tokens(self) -> int:
        return self.pool.num_blocks * self.block_size

    @property
    def usage(self) -> float:
        return self.pool.usage

    def blocks_needed(self, request: Request, num_new_tokens: int) -> int:
        total = request.num_computed_tokens + num_new_tokens
        held = len(self.req_to_blocks.get(request.request_id, ()))
        return max(0, cdiv(total, self.block_size) - held)

    def allocate_slots(self, request: Request, num_new_tokens: int) -> bool:
        """Make room for ``num_new_tokens`` more KV entries; False (nothing changed) if the
        pool cannot supply the blocks."""
        need = self.blocks_needed(request, num_new_tokens)
        if need > self.pool.num_free_blocks:
            return False
        blocks = self.req_to_blocks.setdefault(request.request_id, [])
        if need:
            blocks.extend(self.pool.allocate(need))
        return True

    def free(self, request: Request) -> None:
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self.pool.free(list(reversed(blocks)))

    def block_table(self, request_id: str) -> list[int]:
        return list(self.req_to_blocks.get(request_id, ()))

    def num_slots_allocated(self) -> int:
        return sum(len(b) for b in self.req_to_blocks.values()) * self.block_size

    def check_integrity(self) -> None:
        held: dict[int, int] = {}
        for blocks in self.req_to_blocks.values():
            for b in blocks:
                held[b] = held.get(b, 0) + 1
        self.pool.check_integrity(held)
