"""Gated activations (math in kernels/activation.py; backend chosen at start-up)."""

from __future__ import annotations

import torch
from torch import nn

from membound.kernels.activation import silu_and_mul_ref
from membound.layers.attention.backend import KernelBackend, KernelOps, kernel_ops

__all__ = ["SiluAndMul", "silu_and_mul_ref"]


class SiluAndMul(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ops: KernelOps = kernel_ops(KernelBackend.TORCH)

    def set_kernel_backend(self, backend: KernelBackend) -> None:
        self.ops = kernel_ops(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., 2 * d] holding gate then up -> [..., d]."""
        return self.ops.silu_and_mul(x)
