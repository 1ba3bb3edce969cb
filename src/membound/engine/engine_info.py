"""EngineInfo: what an engine is, fixed once its workers are ready (read by bench, console,
tests): model, device, dtype, weight and KV precision, TP, KV blocks, weight and KV bytes."""

from __future__ import annotations

from dataclasses import dataclass

from membound.config import EngineConfig, normalize_dtype_name
from membound.worker.memory_profiler import MemoryReport
from membound.worker.worker import WorkerReady


@dataclass(frozen=True)
class EngineInfo:
    model: str
    device: str
    dtype: str
    weight_precision: str  # the quantization method, or the dtype when unquantized
    kv_precision: str  # the KV cache's dtype (float8_e4m3fn with kv_cache_dtype="fp8")
    kernel_backend: str  # "torch" | "cpu" | "triton"
    tensor_parallel_size: int
    block_size: int
    num_blocks: int  # per rank (the smallest any rank holds)
    num_cpu_blocks: int  # swap space, in blocks
    weights_bytes: int  # rank 0's resident weights
    kv_bytes: int  # rank 0's KV cache
    memory_report: MemoryReport

    @property
    def bytes_per_block(self) -> int:
        """K and V of one block, every layer (rank 0)."""
        return self.kv_bytes // self.num_blocks if self.num_blocks else 0

    @staticmethod
    def from_ready(config: EngineConfig, ready: WorkerReady) -> EngineInfo:
        dtype = normalize_dtype_name(config.dtype)
        return EngineInfo(
            model=config.model or "?",
            device=ready.memory_report.device,
            dtype=dtype,
            weight_precision=config.quantization or dtype,
            kv_precision=ready.kv_dtype,
            kernel_backend=ready.kernel_backend,
            tensor_parallel_size=config.parallel_config.tensor_parallel_size,
            block_size=ready.block_size,
            num_blocks=ready.num_blocks,
            num_cpu_blocks=ready.num_cpu_blocks,
            weights_bytes=ready.weights_bytes,
            kv_bytes=ready.kv_bytes,
            memory_report=ready.memory_report,
        )
