"""Weight layout for fp32 GEMMs on CPU.

``F.linear(x, W)`` with ``W`` stored ``[out, in]`` row-major asks BLAS for ``x @ W^T``. For a
single token (a batch-1 decode: a matrix-vector product bound by how fast the weight streams
from memory) oneMKL reads a *wide* fp32 weight (out >= 1.5 x in) faster when it is stored
column-major, i.e. as a contiguous ``[in, out]`` matrix seen through ``.t()``: 1.4x over the
wide shapes measured (geometric mean), up to 1.9x (5120 x 768: 12.9 -> 23.0 GB/s on 2 cores;
figures vary run to run), and within noise of row-major for batches of tokens. Square weights go either way (768 x 768 and 4096 x 4096
were faster column-major, 2048 x 2048 row-major) and tall ones (down_proj) are not faster:
they stay row-major. fp16 and bf16 are excluded: their CPU GEMMs are much slower on a
column-major weight (fp16 10-100x). Measured by benchmarks/kernels/bench_cpu_kernels.py
(benchmarks/results/cpu_kernels.json).

The shape stays ``[out, in]`` (only the strides change), so every reader of the weight and
``F.linear`` itself work unchanged; outputs are equal up to rounding.
"""

from __future__ import annotations

import torch

WIDE_RATIO = 1.5  # out_features >= WIDE_RATIO * in_features: store column-major


def prefers_column_major(weight: torch.Tensor) -> bool:
    """An fp32 2-D CPU weight ``[out, in]`` wide enough to gain from column-major."""
    if weight.dim() != 2 or weight.dtype != torch.float32 or weight.device.type != "cpu":
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
