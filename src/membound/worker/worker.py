"""Worker: one rank's model shard, KV cache and ModelRunner.

Every rank builds the same Worker from the same EngineConfig: it loads its shard of the
weights, sizes its KV cache (the ranks agree on the smallest block count any of them can
hold, so one block table addresses all of them), allocates ``ceil(kv_heads / TP)`` heads per
block, and executes each SchedulerOutput. Rank 0's worker lives in the engine's process;
the others in their own (worker/executor.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import cast

import torch
from torch import nn

from membound.config import EngineConfig, KernelConfig, normalize_dtype_name
from membound.core.outputs import ModelRunnerOutput, SchedulerOutput
from membound.distributed.context import ParallelContext
from membound.kernels.contract import select_kernel_ops
from membound.worker.cuda_graph import maybe_capture_decode_graphs
from membound.worker.kv_cache_alloc import (
    KVCacheLayout,
    allocate_kv_cache,
    kv_cache_dtype,
    num_swap_blocks,
    plan_kv_cache,
)
from membound.worker.kv_swap import KVSwapSpace
from membound.worker.memory_profiler import (
    MemoryReport,
    profile_peak_activation_bytes,
    weights_bytes,
)
from membound.worker.model_runner import ModelRunner
from membound.worker.offload import WeightOffloader, plan_offload
from membound.worker.weight_loader import load_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerReady:
    """What a worker reports once it is complete: the engine sizes its KVCacheManager from
    this (the block count is the smallest any tensor-parallel rank can hold)."""

    num_blocks: int
    block_size: int
    num_cpu_blocks: int
    memory_report: MemoryReport
    kernel_backend: str
    kv_dtype: str  # the KV cache's dtype ("float32", "bfloat16", "float8_e4m3fn", ...)
    weights_bytes: int
    kv_bytes: int


class Worker:
    """Start-up reads top to bottom: kernel ops, model on them, weights (each layer's
    post-load step lays them out for those kernels), activation profile with the serving
    kernels, KV cache, then a complete ModelRunner, warmed up with one largest step
    (``ModelRunner.warm_up``)."""

    def __init__(
        self, config: EngineConfig, parallel: ParallelContext, *, progress: bool = False
    ) -> None:
        self.config = config
        self.parallel = parallel
        self.device = parallel.device
        self.dtype: torch.dtype = getattr(torch, normalize_dtype_name(config.dtype))
        mc, cc, sc = config.model_config, config.cache_config, config.scheduler_config
        kc = config.kernel_config
        self.ops = select_kernel_ops(self.device, kc.backend)
        self.model = load_model(
            mc, config.model, dtype=self.dtype, device=self.device,
            load_format=config.load_format, max_positions=sc.max_model_len, seed=config.seed,
            progress=progress and parallel.is_driver, parallel=parallel,
            expert_parallel=config.parallel_config.enable_expert_parallel,
            ops=self.ops,
        )
        self.kv_dtype = kv_cache_dtype(cc, self.dtype, self.device)
        if cc.fp8_kv_cache and parallel.is_driver:
            _log_kv_scales(self.model)
        self.offloader, offloaded_bytes = self._offload_weights()
        self.weights_bytes = weights_bytes(self.model)
        self.kv_layout, self.memory_report = self._plan_memory(offloaded_bytes)
        kv_caches = allocate_kv_cache(self.kv_layout, self.device)
        num_cpu_blocks = num_swap_blocks(self.kv_layout, cc, sc.preemption_mode)
        self.runner = ModelRunner(
            self.model, kv_caches, self.ops, block_size=self.kv_layout.block_size,
            vocab_size=mc.vocab_size, device=self.device, sliding_window=mc.sliding_window,
            seed=config.seed, max_num_seqs=sc.max_num_seqs, max_model_len=sc.max_model_len,
            swap_space=KVSwapSpace(kv_caches, num_cpu_blocks) if num_cpu_blocks else None,
            cuda_graphs=maybe_capture_decode_graphs(
                self.model, kv_caches, self._graph_config(), self.ops.backend,
                sc.max_num_seqs, sc.max_model_len, self.kv_layout.block_size,
                mc.sliding_window, self.device,
            ),
        )
        warmed = self.runner.warm_up(min(sc.max_num_batched_tokens, sc.max_model_len),
                                     sc.max_num_seqs, self.kv_layout.num_blocks)  # fmt: skip
        logger.debug("warmed up: one step of %d requests", warmed)
        self.ready = WorkerReady(
            num_blocks=self.kv_layout.num_blocks, block_size=self.kv_layout.block_size,
            num_cpu_blocks=num_cpu_blocks, memory_report=self.memory_report,
            kernel_backend=self.ops.backend.value,
            kv_dtype=str(self.kv_dtype).removeprefix("torch."),
            weights_bytes=self.weights_bytes, kv_bytes=self.kv_layout.total_bytes,
        )

    def _graph_config(self) -> KernelConfig:
        kc = self.config.kernel_config
        if self.offloader is not None and not kc.enforce_eager:
            # streamed weights change buffers between steps: a captured graph would not see it
            logger.info("cpu_offload_gb is set: decode CUDA graphs disabled")
            kc = replace(kc, enforce_eager=True)
        if self.parallel.world_size > 1 and not kc.enforce_eager:
            # capturing NCCL all-reduces in graphs has not been tried on GPUs yet
            logger.info("tensor_parallel_size > 1: decode CUDA graphs disabled (not tested yet)")
            kc = replace(kc, enforce_eager=True)
        return kc

    def execute(
        self, sched: SchedulerOutput, token_bitmasks: dict[str, torch.Tensor] | None = None
    ) -> ModelRunnerOutput:
        return self.runner.execute(sched, token_bitmasks)

    def _offload_weights(self) -> tuple[WeightOffloader | None, int]:
        gb = self.config.cpu_offload_gb
        if gb <= 0:
            return None, 0
        if self.device.type != "cuda":
            logger.info("cpu_offload_gb=%s ignored: without a GPU the weights already live in "
                        "CPU memory", gb)
            return None, 0
        layers = cast(nn.ModuleList, self.model.model.layers)  # type: ignore[union-attr]
        plan = plan_offload(layers, int(gb * 1024**3))
        if not plan.layer_indices:
            logger.warning("cpu_offload_gb=%s is smaller than one decoder layer; nothing "
                           "offloaded", gb)
            return None, 0
        offloader = WeightOffloader(layers, plan, self.device)
        torch.cuda.empty_cache()
        return offloader, plan.offloaded_bytes

    def _plan_memory(self, offloaded_bytes: int) -> tuple[KVCacheLayout, MemoryReport]:
        """Size the KV cache: explicit blocks or bytes (per rank), else on CUDA
        gpu_memory_utilization x total minus what is in use and the measured activation
        peak of one step, else on CPU a default budget. Ranks take the smallest count."""
        cfg = self.config
        cc, sc, mc = cfg.cache_config, cfg.scheduler_config, cfg.model_config
        tp = cfg.parallel_config.tensor_parallel_size
        available = activation = total = None
        if self.device.type == "cuda":
            activation = profile_peak_activation_bytes(
                self.model, min(sc.max_num_batched_tokens, sc.max_model_len), sc.max_num_seqs,
                mc.vocab_size, self.device,
            )
            free, total = torch.cuda.mem_get_info(self.device)
            if cc.num_kv_blocks is None and cc.kv_cache_memory_bytes is None:
                available = int(total * cc.gpu_memory_utilization) - (total - free) - activation
        layout = plan_kv_cache(mc, cc, sc, self.kv_dtype, available, tp)
        agreed = self.parallel.all_reduce_min(layout.num_blocks)
        layout = replace(layout, num_blocks=agreed)
        cpu_blocks = num_swap_blocks(layout, cc, sc.preemption_mode)
        report = MemoryReport(
            device=str(self.device), total_bytes=total, weights_bytes=self.weights_bytes,
            activation_bytes=activation, kv_bytes=layout.total_bytes,
            num_blocks=layout.num_blocks, block_size=layout.block_size,
            max_model_len=sc.max_model_len, swap_bytes=cpu_blocks * layout.bytes_per_block,
            offloaded_bytes=offloaded_bytes,
        )
        return layout, report


def _log_kv_scales(model: nn.Module) -> None:
    """Say where the FP8 KV cache's scales came from (the checkpoint, or 1.0)."""
    layers = [m for m in model.modules() if hasattr(m, "kv_scales_from_checkpoint")]
    loaded = sum(bool(m.kv_scales_from_checkpoint) for m in layers)
    if loaded:
        logger.info("FP8 KV cache (E4M3): per-layer K/V scales from the checkpoint (%d of %d "
                    "layers; the others 1.0)", loaded, len(layers))
    else:
        logger.info("FP8 KV cache (E4M3): the checkpoint carries no K/V scales; using 1.0 "
                    "(values beyond +-448 saturate)")
