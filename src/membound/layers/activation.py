"""Gated activations (math in kernels/activation.py; backend chosen at start-up)."""

from __future__ import annotations

import torch
from torch import nn

from membound.kernels.activation import silu_and_mul_ref
from membound.kernels.contract import TORCH_OPS, KernelOps

__all__ = ["SiluAndMul", "silu_and_mul_ref"]


class SiluAndMul(nn.Module):
    def __init__(self, ops: KernelOps | None = None) -> None:
        super().__init__()
        self.ops: KernelOps = ops or TORCH_OPS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., 2 * d] holding gate then up -> [..., d]."""
        return self.ops.silu_and_mul(x=x)
