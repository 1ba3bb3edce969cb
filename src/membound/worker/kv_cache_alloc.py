"""KV cache sizing and allocation.

How many blocks fit is derived at start-up and lives in ``KVCacheLayout``; it is never
patched into CacheConfig. Under tensor parallelism the layout is one rank's: it holds
``ceil(num_key_value_heads / TP)`` heads (a KV head replicated past TP = KV heads is stored
on each rank that uses it), and byte budgets are per rank (per GPU), as the planner's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from membound.config import CacheConfig, ConfigError, ModelConfig, SchedulerConfig
from membound.core.kv_cache_manager import cdiv
from membound.kernels.kv_quant import FP8_KV_DTYPE

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


def kv_cache_dtype(cache: CacheConfig, model_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The element type of the KV cache: E4M3 for kv_cache_dtype='fp8', else the model's.
    FP8 on a GPU needs compute capability 8.9+ (Ada, Hopper, Blackwell) to convert."""
    if not cache.fp8_kv_cache:
        return model_dtype
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        cap = ".".join(map(str, torch.cuda.get_device_capability(device)))
        raise ConfigError(
            f"kv_cache_dtype={cache.kv_cache_dtype!r} needs a GPU of compute capability 8.9 or "
            f"newer (this one is {cap}); use kv_cache_dtype='auto'"
        )
    return FP8_KV_DTYPE


def kv_heads_per_rank(model: ModelConfig, tensor_parallel_size: int = 1) -> int:
    return -(-model.num_key_value_heads // tensor_parallel_size)


def plan_kv_cache(
    model: ModelConfig,
    cache: CacheConfig,
    sched: SchedulerConfig,
    dtype: torch.dtype,
    available_bytes: int | None,
    tensor_parallel_size: int = 1,
) -> KVCacheLayout:
    """Pick the number of blocks of one rank: an explicit count, an explicit byte budget,
    the measured free memory (GPU), or on CPU a default budget capped at what the scheduler
    could use."""
    heads = kv_heads_per_rank(model, tensor_parallel_size)
    layout = KVCacheLayout(1, cache.block_size, model.num_hidden_layers, heads, model.head_dim,
                           dtype)
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
    budget = num_blocks * per_block
    if cache.num_kv_blocks is None and num_blocks * cache.block_size < sched.max_model_len:
        need = cdiv(sched.max_model_len, cache.block_size) * per_block
        raise ConfigError(
            f"max_model_len={sched.max_model_len} needs {need / GiB:.2f} GiB of KV cache for "
            f"one sequence but only {max(budget, 0) / GiB:.2f} GiB is available "
            f"({per_block} bytes per block of {cache.block_size} tokens); lower max_model_len, "
            "or give the KV cache more memory (gpu_memory_utilization, kv_cache_memory_bytes)"
        )
    if num_blocks < 1:
        raise ConfigError("num_kv_blocks must be at least 1")
    return replace(layout, num_blocks=int(num_blocks))


def num_swap_blocks(layout: KVCacheLayout, cache: CacheConfig, preemption_mode: str) -> int:
    """CPU blocks for swap preemption (none unless preemption_mode='swap')."""
    if preemption_mode != "swap":
        return 0
    return int(cache.swap_space * GiB) // layout.bytes_per_block


def allocate_kv_cache(layout: KVCacheLayout, device: torch.device) -> list[torch.Tensor]:
    """One [2, num_blocks, block_size, num_kv_heads, head_dim] tensor per layer, zeroed."""
    shape = (2, layout.num_blocks, layout.block_size, layout.num_kv_heads, layout.head_dim)
    return [torch.zeros(shape, dtype=layout.dtype, device=device) for _ in range(layout.num_layers)]
