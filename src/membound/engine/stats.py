"""EngineStats: a snapshot of the engine's counters and gauges (for /metrics, dashboards,
benchmarks). Counters are cumulative since start-up."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    kv_num_blocks: int
    kv_num_free_blocks: int
    kv_block_size: int
    kv_num_cached_blocks: int  # blocks indexed by the prefix cache (in use or evictable)
    num_preemptions: int
    num_swaps_out: int
    num_swaps_in: int
    prompt_tokens_total: int
    generation_tokens_total: int
    prefix_cache_queries_total: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hits_total: int  # of those, tokens found cached

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks in use (0..1)."""
        return 1.0 - self.kv_num_free_blocks / self.kv_num_blocks

    @property
    def prefix_cache_hit_rate(self) -> float:
        q = self.prefix_cache_queries_total
        return self.prefix_cache_hits_total / q if q else 0.0
