"""KV cache sizing and allocation.

How many blocks fit is derived at start-up and lives in ``KVCacheLayout``; it is never
patched into CacheConfig.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from membound.config import CacheConfig, ConfigError, ModelConfig, SchedulerConfig
from membound.core.kv_cache_manager import cdiv

GiB = 1024**3


@dataclass(frozen=True)
class KVCacheLayout:
    num_blocks: int
    block_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_block(self) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * elem

    @property
    def total_bytes(self) -> int:
        return self.num_blocks * self.bytes_per_block

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size


def plan_kv_cache(
    model: ModelConfig,
    cache: CacheConfig,
    sched: SchedulerConfig,
    dtype: torch.dtype,
    available_bytes: int | None,
) -> KVCacheLayout:
    """Pick the number of blocks: an explicit count, an explicit byte budget, the measured
    free memory (GPU), or on CPU a default budget capped at what the scheduler could use."""
    layout = KVCacheLayout(
        1, cache.block_size, model.num_hidden_layers, model.num_key_value_heads,
        model.head_dim, dtype,
    )
    per_block = layout.bytes_per_block
    max_useful = sched.max_num_seqs * cdiv(sched.max_model_len, cache.block_size)
    if cache.num_kv_blocks is not None:
        num_blocks = cache.num_kv_blocks
    elif cache.kv_cache_memory_bytes is not None:
        num_blocks = cache.kv_cache_memory_bytes // per_block
    elif available_bytes is not None:
        num_blocks = available_bytes // per_block
    else:
        num_blocks = min(cache.cpu_kv_cache_default_bytes // per_block, max_useful)
    if num_blocks < 1:
        budget = cache.kv_cache_memory_bytes or available_bytes or cache.cpu_kv_cache_default_bytes
        raise ConfigError(
            f"the KV cache budget ({budget / GiB:.2f} GiB) does not hold even one block of "
            f"{per_block} bytes; raise gpu_memory_utilization or kv_cache_memory_bytes"
        )
    return KVCacheLayout(
        int(num_blocks), cache.block_size, model.num_hidden_layers,
        model.num_key_value_heads, model.head_dim, dtype,
    )


def allocate_kv_cache(layout: KVCacheLayout, device: torch.device) -> list[torch.Tensor]:
    """One [2, num_blocks, block_size, num_kv_heads, head_dim] tensor per layer, zeroed."""
    shape = (2, layout.num_blocks, layout.block_size, layout.num_kv_heads, layout.head_dim)
    return [torch.zeros(shape, dtype=layout.dtype, device=device) for _ in range(layout.num_layers)]
