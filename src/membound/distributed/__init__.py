"""Tensor parallelism on torch.distributed: NCCL on GPUs, gloo on CPU (docs/parallelism.md)."""

from __future__ import annotations

from membound.distributed.context import (
    ParallelContext,
    destroy_parallel_context,
    init_parallel_context,
)
from membound.distributed.launch import RankProcesses, WorkerDiedError, torchrun_env

__all__ = [
    "ParallelContext",
    "RankProcesses",
    "WorkerDiedError",
    "destroy_parallel_context",
    "init_parallel_context",
    "torchrun_env",
]
