"""Weight layout for GEMMs on CPU: column-major fp32, VNNI-packed or oneDNN-prepacked bf16.

**bf16 on a CPU with AMX or AVX512-BF16** (the native kernels built, kernels/cpu_native.py
``linear_supported``; ``bf16_gemm_path`` says which multiplies): the weight is packed once, after loading, by
``pack_vnni`` into ``[N_pad / 64, K / 2, 64, 2]``: blocks of 64 output columns, each in the
VNNI layout the ukernel reads (pairs of consecutive input features side by side; output rows
padded with zeros to a multiple of 64), and every product runs the native ``linear_vnni``
(csrc/cpu_kernels.cpp). Against the oneDNN prepacked GEMM below it streams SmolLM2's and
TinyLlama's weights 1.07-1.47x faster for one row (a batch-1 decode step), 0.86-1.11x at 64
rows, and is 0.73-0.92x for 2048 rows (prefill), where the matrix units' throughput, not the
weight's bytes, is the limit (benchmarks/results/cpu_vnni_linear.json, 2 threads). It is
the only copy (no oneDNN prepack beside it): decode, where the weights' bytes set the pace,
is the case the engine is built for. Without AMX (AMD Zen 4, say) the products run
membound's AVX512-BF16 kernel (csrc ``avx_gemm_block``): against oneDNN's prepacked GEMM on
SmolLM2's shapes 1.53-1.85x for one row, 1.11-1.47x for 8, 1.07-1.26x for 64 and level
(0.96-1.12x) from 512 rows on, where both run at the CPU's bf16 peak
(``benchmarks/kernels/bench_cpu_vnni_linear.py``, ``benchmarks/results/cpu_vnni_linear_zen4.json``,
AMD Zen 4). ``unpack_vnni`` gives the ``[out, in]`` weight back.
The 4-D shape is how a layer tells this layout from a plain weight (``is_vnni``).

**bf16 elsewhere** (neither AMX nor AVX512-BF16, or no native kernels):
the weight is reordered once, after loading, into oneDNN's blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``, the op Inductor's CPU freezing pass uses) and
every product runs ``torch.ops.mkldnn._linear_pointwise`` on it. Against ``F.linear`` on the plain
bf16 weight, the geometric-mean speedup of the prepacked weight over
SmolLM2-135M and TinyLlama-1.1B shapes is 1.26x at 1 token, 1.8x at 8 and 2.7x at 64 (one
thread, a loaded machine: benchmarks/results/cpu_kernels_bf16_quant.json, ``bf16_linear``
rows; the large TinyLlama shapes at 1 token were within noise or slower in that run). Outputs
equal ``F.linear``'s (``linear_prepacked_ref``) up to the order of the bf16 sums. The prepacked
weight is an opaque oneDNN tensor: ``to_dense()`` gives the ``[out, in]`` weight back.

**fp32**:

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


def can_prepack(weight: torch.Tensor) -> bool:
    """A 2-D bf16 CPU weight that oneDNN can prepack (the CPU runs bf16 through oneDNN)."""
    return (
        weight.dim() == 2
        and weight.dtype == torch.bfloat16
        and weight.device.type == "cpu"
        and not weight.is_mkldnn
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def prepack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``[out, in]`` bf16 -> oneDNN's blocked layout (an opaque tensor of the same shape)."""
    if not can_prepack(weight):
        raise ValueError(
            f"cannot prepack a {weight.dtype} {tuple(weight.shape)} weight on "
            f"{weight.device}: oneDNN prepacking takes 2-D bf16 CPU weights"
        )
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


def linear_prepacked(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W^T (+ bias)`` with ``W`` from ``prepack_weight``; x [..., in] bf16."""
    if x.dtype != torch.bfloat16:
        raise ValueError(f"a prepacked bf16 weight needs bf16 activations, got {x.dtype}")
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def linear_prepacked_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The reference: the plain ``[out, in]`` weight through ``F.linear``."""
    return torch.nn.functional.linear(x, weight, bias)


def dense_weight(weight: torch.Tensor, out_features: int) -> torch.Tensor:
    """The ``[out, in]`` strided weight of a plain, oneDNN-prepacked or VNNI-packed one."""
    if is_vnni(weight):
        return unpack_vnni(weight, out_features)
    return weight.to_dense() if weight.is_mkldnn else weight


VNNI_BLOCK = 64  # output columns per packed block (csrc/cpu_kernels.cpp LN_NB)


def pack_vnni(weight: torch.Tensor) -> torch.Tensor:
    """``[out, in]`` bf16 (``in`` even) -> ``[ceil(out / 64), in / 2, 64, 2]``: per block of 64
    output rows (zero-padded), element ``[b, k, n, j]`` is ``W[64 b + n, 2 k + j]``."""
    out_features, in_features = weight.shape
    if weight.dtype != torch.bfloat16 or in_features % 2:
        raise ValueError(
            f"pack_vnni takes a bf16 weight with an even number of input features, got "
            f"{weight.dtype} {tuple(weight.shape)}"
        )
    blocks = -(-out_features // VNNI_BLOCK)
    padded = weight.detach().new_zeros(blocks * VNNI_BLOCK, in_features)
    padded[:out_features] = weight.detach()
    return padded.view(blocks, VNNI_BLOCK, in_features // 2, 2).permute(0, 2, 1, 3).contiguous()


def unpack_vnni(packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """The ``[out_features, in]`` weight ``pack_vnni`` packed."""
    blocks, half_in = packed.shape[0], packed.shape[1]
    rows = packed.permute(0, 2, 1, 3).reshape(blocks * VNNI_BLOCK, half_in * 2)
    return rows[:out_features]


def is_vnni(weight: torch.Tensor) -> bool:
    """A weight ``pack_vnni`` packed (4-D; plain and oneDNN-prepacked weights are 2-D)."""
    return weight.dim() == 4
