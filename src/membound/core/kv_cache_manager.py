"""KVCacheManager: request-level block allocation, prefix-cache hits and CPU swap space.

A request's block table is ``req_to_blocks[request_id]``: block i holds the K/V of its
tokens i*block_size .. (i+1)*block_size - 1. With prefix caching, the leading full blocks
may be shared with other requests (ref-counted) and every full block is registered under
its chained hash as soon as the step that computes it is scheduled.
"""

from __future__ import annotations

from membound.core.block_hash import BlockHash, extend_block_hashes, root_hash
from membound.core.block_pool import BlockPool
from membound.core.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = False,
        prefix_cache_salt: str | None = None,
        num_cpu_blocks: int = 0,
        recent_window: int | None = None,
    ) -> None:
        self.block_size = block_size
        self.pool = BlockPool(num_blocks, enable_prefix_caching, recent_window)
        self.cpu_pool = BlockPool(num_cpu_blocks) if num_cpu_blocks > 0 else None
        self.enable_prefix_caching = enable_prefix_caching
        self._root = root_hash(prefix_cache_salt)
        self.req_to_blocks: dict[str, list[int]] = {}
        self.req_to_cpu_blocks: dict[str, list[int]] = {}
        self._num_registered: dict[str, int] = {}  # leading blocks already in the hash index
        self.prefix_queries = 0  # tokens looked up
        self.prefix_hits = 0  # tokens found cached

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def capacity_tokens(self) -> int:
        return self.pool.num_blocks * self.block_size

    @property
    def usage(self) -> float:
        return self.pool.usage

    # ---- prefix cache ------------------------------------------------------------------
    def block_hashes(self, request: Request) -> list[BlockHash]:
        extend_block_hashes(request.block_hashes, request.all_token_ids, self.block_size, self._root)
        return request.block_hashes

    def get_computed_blocks(self, request: Request) -> list[int]:
        """The longest run of cached blocks matching the request's leading tokens. At least
        one token is always left to compute (its logits give the next token)."""
        if not self.enable_prefix_caching or request.sampling_params.prompt_logprobs is not None:
            return []
        hashes = self.block_hashes(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[int] = []
        for h in hashes[:max_blocks]:
            block = self.pool.lookup(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def record_prefix_lookup(self, num_tokens: int, num_hit_tokens: int) -> None:
        """Count one admitted request's lookup for the hit rate."""
        if self.enable_prefix_caching:
            self.prefix_queries += num_tokens
            self.prefix_hits += num_hit_tokens

    def _register_full_blocks(self, request: Request, num_tokens: int) -> None:
        """Index every block that is full once ``num_tokens`` tokens are computed."""
        if not self.enable_prefix_caching:
            return
        rid = request.request_id
        blocks = self.req_to_blocks[rid]
        hashes = self.block_hashes(request)
        n_full = min(num_tokens // self.block_size, len(hashes), len(blocks))
        for i in range(self._num_registered.get(rid, 0), n_full):
            self.pool.cache_block(blocks[i], hashes[i])
        self._num_registered[rid] = max(n_full, self._num_registered.get(rid, 0))

    # ---- allocation --------------------------------------------------------------------
    def blocks_needed(self, request: Request, num_new_tokens: int, num_hit_blocks: int = 0) -> int:
        total = request.num_computed_tokens + num_hit_blocks * self.block_size + num_new_tokens
        held = len(self.req_to_blocks.get(request.request_id, ())) + num_hit_blocks
        return max(0, cdiv(total, self.block_size) - held)

    def allocate_slots(
        self, request: Request, num_new_tokens: int, computed_blocks: list[int] | None = None
    ) -> bool:
        """Make room for ``num_new_tokens`` more KV entries after the request's computed
        tokens (and after ``computed_blocks``, a prefix hit for a request with none yet).
        Returns False, changing nothing, if the pool cannot supply the blocks."""
        hits = computed_blocks or []
        need = self.blocks_needed(request, num_new_tokens, len(hits))
        if need + self.pool.num_touch_from_free(hits) > self.pool.num_free_blocks:
            return False
        blocks = self.req_to_blocks.setdefault(request.request_id, [])
        if hits:
            assert not blocks, "a prefix hit is only taken by a request holding no blocks"
            self.pool.touch(hits)
            blocks.extend(hits)
            self._num_registered[request.request_id] = len(hits)
        if need:
            blocks.extend(self.pool.allocate(need))
        total = request.num_computed_tokens + len(hits) * self.block_size + num_new_tokens
        self._register_full_blocks(request, total)
        return True

    def free(self, request: Request) -> None:
        rid = request.request_id
        self.pool.free(list(reversed(self.req_to_blocks.pop(rid, []))))
        self._num_registered.pop(rid, None)
        cpu = self.req_to_cpu_blocks.pop(rid, None)
        if cpu and self.cpu_pool is not None:
            self.cpu_pool.free(cpu)

    def block_table(self, request_id: str) -> list[int]:
        return list(self.req_to_blocks.get(request_id, ()))

    def num_slots_allocated(self) -> int:
        return sum(len(b) for b in self.req_to_blocks.values()) * self.block_size

    # ---- swap to CPU -------------------------------------------------------------------
    def can_swap_out(self, request: Request) -> bool:
        blocks = self.req_to_blocks.get(request.request_id, [])
        return self.cpu_pool is not None and 0 < len(blocks) <= self.cpu_pool.num_free_blocks

    def swap_out(self, request: Request) -> list[tuple[int, int]]:
        """Move the request's blocks to the CPU pool: returns (gpu block, cpu block) copies
        the worker must make before this step's forward pass."""
        assert self.cpu_pool is not None
        rid = request.request_id
        gpu = self.req_to_blocks.pop(rid)
        cpu = self.cpu_pool.allocate(len(gpu))
        self.req_to_cpu_blocks[rid] = cpu
        self.pool.free(list(reversed(gpu)))
        self._num_registered.pop(rid, None)
        return list(zip(gpu, cpu))

    def can_swap_in(self, request: Request, num_new_tokens: int) -> bool:
        cpu = self.req_to_cpu_blocks.get(request.request_id, [])
        extra = max(0, cdiv(request.num_computed_tokens + num_new_tokens, self.block_size) - len(cpu))
        return len(cpu) + extra <= self.pool.num_free_blocks

    def swap_in(self, request: Request) -> list[tuple[int, int]]:
        """Bring a swapped request's blocks back: returns (cpu block, gpu block) copies."""
        assert self.cpu_pool is not None
        rid = request.request_id
        cpu = self.req_to_cpu_blocks.pop(rid)
        gpu = self.pool.allocate(len(cpu))
        self.req_to_blocks[rid] = gpu
        self.cpu_pool.free(cpu)
        self._register_full_blocks(request, request.num_computed_tokens)
        return list(zip(cpu, gpu))

    def check_integrity(self) -> None:
        held: dict[int, int] = {}
        for blocks in self.req_to_blocks.values():
            for b in blocks:
                held[b] = held.get(b, 0) + 1
        self.pool.check_integrity(held)
        if self.cpu_pool is not None:
            cpu_held: dict[int, int] = {}
            for blocks in self.req_to_cpu_blocks.values():
                for b in blocks:
                    cpu_held[b] = cpu_held.get(b, 0) + 1
            self.cpu_pool.check_integrity(cpu_held)
        assert not set(self.req_to_blocks) & set(self.req_to_cpu_blocks)
