"""Weight layout for float GEMMs on CPU.

``F.linear(x, W)`` with ``W`` stored ``[out, in]`` row-major asks BLAS for ``x @ W^T``. For a
single token (a batch-1 decode: a matrix-vector product bound by how fast the weight streams
from memory) oneMKL reads a *wide* weight (out > in) much faster when it is stored
column-major, i.e. as a contiguous ``[in, out]`` matrix seen through ``.t()``:

    weight [out, in]   row-major:  x @ W^T   5120 x 768 fp32: 12 GB/s  (2 cores)
    weight [out, in]   col-major:  x @ W     5120 x 768 fp32: 23 GB/s

The shape stays ``[out, in]`` (only the strides change), so every reader of the weight and
``F.linear`` itself work unchanged. Square and tall weights (o_proj, down_proj) are left
alone: there the row-major layout is as fast or faster. For batches of tokens the two
layouts are within noise of each other. Measured by benchmarks/kernels/cpu_linear_layout.py
(results in benchmarks/results/cpu_linear_layout.json).
"""

from __future__ import annotations

import torch

WIDE_RATIO = 1.5  # out_features >= WIDE_RATIO * in_features: store column-major


def prefers_column_major(weight: torch.Tensor) -> bool:
    """A floating-point 2-D weight ``[out, in]`` wide enough to gain from column-major."""
    if weight.dim() != 2 or not weight.is_floating_point() or weight.device.type != "cpu":
        return False
    out_features, in_features = weight.shape
    return out_features >= WIDE_RATIO * in_features


def to_column_major(param: torch.Tensor) -> bool:
    """Re-store ``param`` (a 2-D weight) column-major in place, keeping its shape and the
    Parameter object; returns whether it changed. Peak memory: one extra copy of it."""
    if param.dim() != 2 or param.stride() == (1, param.shape[0]):
        return False
    param.data = param.data.t().contiguous().t()
    return True
