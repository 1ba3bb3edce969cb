"""RMSNorm, optionally fused with the residual add. The math lives in kernels/rms_norm.py:
the torch reference is the CPU path, the Triton kernel the CUDA path (backend chosen at
start-up and passed in as ``ops``)."""

from __future__ import annotations

import torch
from torch import nn

from membound.kernels.contract import TORCH_OPS, KernelOps
from membound.kernels.rms_norm import rms_norm_ref

__all__ = ["RMSNorm", "rms_norm_ref"]


class RMSNorm(nn.Module):
    def __init__(
        self, hidden_size: int, eps: float = 1e-6, ops: KernelOps | None = None
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.ops: KernelOps = ops or TORCH_OPS

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Without ``residual``: norm(x). With it: (norm(x + residual), x + residual)."""
        if residual is None:
            return self.ops.rms_norm(x=x, weight=self.weight, eps=self.eps)
        return self.ops.fused_add_rms_norm(x=x, residual=residual, weight=self.weight, eps=self.eps)
