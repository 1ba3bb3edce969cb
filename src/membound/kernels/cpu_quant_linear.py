"""INT8 / INT4 GEMMs on CPU: weight-only through torch's packed CPU kernels (as torchao does),
and INT8 W8A8 through membound's own (csrc ``linear_int8``, layout below).

A batch-1 decode streams every weight once per token: 8-bit weights move half of bf16's
bytes, 4-bit a quarter. torch ships CPU kernels that dequantize inside the product:

    INT8  torch.ops.aten._weight_int8pack_mm(x, W_q [N, K] int8, scales [N])
          y = x @ (W_q * scales[:, None])^T          per output channel, symmetric
    INT4  torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, G, scales_and_zeros)
          packed = _convert_weight_to_int4pack_for_cpu(q [N, K] int32 0..15, 1)
          scales_and_zeros [K // G, N, 2]: W[n, k] = (q[n, k] - 8) * s + z   (group k // G)

Both are fast only with bf16 activations on this hardware (fp32 and fp16 activations run
10-300x slower), so the int8 / int4 layer methods use them in bf16 models only (fp32 models
keep the reference numerics); ``to_kernel_dtype`` casts other inputs for direct callers.
They are GEMV kernels, their cost grows with every row: above ``INT8_KERNEL_MAX_ROWS`` /
``INT4_KERNEL_MAX_ROWS`` rows the layer dequantizes to bf16 once per call and runs the bf16
GEMM instead. The thresholds are where the kernel stops beating dequantize + GEMM
(benchmarks/kernels/bench_cpu_quant_crossover.py, benchmarks/results/cpu_quant_crossover.json,
SmolLM2 shapes, one thread): INT8 between 16 and 32 rows, INT4 between 64 and 96 (at 64 rows
2.8 ms against 3.9 for gate_up). Measured
(benchmarks/results/cpu_kernels_bf16_quant.json, one thread, a loaded machine): at 1 token
INT8 is 1.5x and INT4 3.6x faster than the prepacked bf16 GEMM (geometric means over SmolLM2
and TinyLlama shapes), at 8 tokens both are already slower than it (0.4x / 0.6x), and the
dequantize path at 64 tokens is far slower than bf16 (it rewrites the whole weight per call):
quantized weights pay at batch 1 and cost at larger batches.

**INT8 W8A8** (the int8 quantization method's CPU numerics: per-channel int8 weights,
activations quantized per row in groups of ``INT8_ACT_GROUP`` inputs, each with its own scale,
as llama.cpp's 8-bit activation blocks; exact integer sums per group) multiplies with the CPU's
integer dot products (AVX512-VNNI, csrc ``linear_int8``): one instruction does 64
multiply-adds of bytes where the bf16 one does 32, at the same rate, so the compute-bound
GEMMs of a prefill run at up to twice the bf16 kernel's arithmetic and the memory-bound ones of
a decode read half its bytes. Per-token activation scales alone (what the CUDA path's
``torch._int_mm`` and fp32 models compute) cost SmolLM2-135M a KL divergence of 0.034 against
the unquantized model, five times weight-only int8's 0.007; groups of 64 bring it to 0.011
(docs/quantization.md). ``pack_int8_vnni`` lays the ``[N, K]`` int8 weight out as
``[N_pad / 64, K / 4, 64, 4]`` uint8 holding ``W + 128`` (blocks of 64 output columns, four
consecutive inputs of a column in one 32-bit lane, zero-padded columns): the instruction
takes one unsigned operand, and the kernel takes the offset back out of each group's sum.
``int8_grouped_linear_ref`` is the reference; ``unpack_int8_vnni`` gives the weight back.

membound's INT4 layout (kernels/int4_gemm.py: asymmetric, integer zero points z) maps onto
the kernel's with ``(q - z) * s = (q - 8) * s + (8 - z) * s``. The packed INT4 layout is
torch's (blocks of 64 output rows: byte ``[nb, k, d]`` holds row ``64 nb + d`` in its low
nibble and ``64 nb + 32 + d`` in its high one); ``dequantize_int4_cpu`` reads it back and
the tests check it against the kernel itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from membound.kernels.cpu_linear import VNNI_BLOCK

KERNEL_DTYPE = torch.bfloat16
INT8_KERNEL_MAX_ROWS = 16  # rows up to which each packed kernel beats dequantize + bf16 GEMM
INT4_KERNEL_MAX_ROWS = 64  # (benchmarks/results/cpu_quant_crossover.json)
INT4_BLOCK_N = 64  # output rows per block of torch's CPU int4 layout
INT4_GROUP_SIZES = (32, 64, 128, 256)


def to_kernel_dtype(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == KERNEL_DTYPE else x.to(KERNEL_DTYPE)


def has_cpu_quant_kernels() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm") and hasattr(
        torch.ops.aten, "_weight_int4pack_mm_for_cpu"
    )


# ---- INT8 -------------------------------------------------------------------------------


def int8_weight_only_linear(
    x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor
) -> torch.Tensor:
    """x [M, K] -> [M, N] bf16; weight [N, K] int8, scales [N] bf16."""
    x = to_kernel_dtype(x)
    if x.shape[0] > INT8_KERNEL_MAX_ROWS:
        return F.linear(x, weight.to(KERNEL_DTYPE) * scales[:, None])
    return torch.ops.aten._weight_int8pack_mm(x, weight, scales)


def int8_weight_only_linear_ref(
    x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor
) -> torch.Tensor:
    """The reference in float32: x @ (W_q * s)^T."""
    w = weight.to(torch.float32) * scales.to(torch.float32)[:, None]
    return F.linear(x.to(torch.float32), w)


# ---- INT8 W8A8 ---------------------------------------------------------------------------

INT8_MAX = 127.0
INT8_MIN_SCALE = 1e-12  # an all-zero row's scale (its values quantize to 0)
INT8_VNNI_K = 4  # input features per 32-bit lane of the packed layout
INT8_VNNI_OFFSET = 128  # added to the packed weight: the instruction's operand is unsigned
INT8_ACT_GROUP = 64  # activations' inputs per scale (csrc I8_GROUP)


def quantize_int8(
    x: torch.Tensor, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``x [M, K]`` -> (int8 values, float32 scales [M, 1]), symmetric round-to-nearest
    (half to even); a given ``scale`` (static, per tensor) is used for every row."""
    xf = x.to(torch.float32)
    if scale is None:
        scale = (xf.abs().amax(dim=-1, keepdim=True) / INT8_MAX).clamp(min=INT8_MIN_SCALE)
    else:
        scale = scale.to(torch.float32).reshape(1, 1).expand(x.shape[0], 1)
    q = torch.round(xf / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale.contiguous()


def int8_linear_ref(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
    input_scale: torch.Tensor | None,
) -> torch.Tensor:
    """x [M, K] -> [M, N] float32 = (x_q @ W_q^T) * s_x * s_w; integer products exact
    (float64 holds them)."""
    xq, xs = quantize_int8(x, input_scale)
    acc = xq.to(torch.float64) @ weight.to(torch.float64).t()  # [M, N] exact int sums
    return (acc * xs.to(torch.float64) * weight_scale.to(torch.float64)[None, :]).float()


def int8_grouped_linear_ref(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
    input_scale: torch.Tensor | None, group: int = INT8_ACT_GROUP,
) -> torch.Tensor:
    """x [M, K] -> [M, N] float32 = s_w * sum_g s[m, g] * (x_q @ W_q^T over group g): the
    activations quantized per row in groups of ``group`` inputs (a static ``input_scale``:
    that one scale for every group); each group's integer sum exact (float64 holds it)."""
    m, k = x.shape
    xq, xs = quantize_int8(x.reshape(m * (k // group), group), input_scale)
    xq = xq.reshape(m, k // group, group).to(torch.float64)
    w = weight.to(torch.float64).reshape(-1, k // group, group)  # [N, G, group]
    acc = torch.einsum("mgk,ngk->mgn", xq, w)  # exact integer sums per group
    y = (acc * xs.reshape(m, k // group, 1).to(torch.float64)).sum(dim=1)
    return (y * weight_scale.to(torch.float64)[None, :]).float()


def pack_int8_vnni(weight: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` int8 (K a multiple of 4) -> ``[ceil(N / 64), K / 4, 64, 4]`` uint8, element
    ``[b, k, n, j] = W[64 b + n, 4 k + j] + 128``, zero-padded columns (128)."""
    n, k = weight.shape
    if weight.dtype != torch.int8 or k % INT8_VNNI_K:
        raise ValueError(f"pack_int8_vnni takes an int8 weight whose input features are a "
                         f"multiple of {INT8_VNNI_K}, got {weight.dtype} {tuple(weight.shape)}")  # fmt: skip
    blocks = -(-n // VNNI_BLOCK)
    padded = weight.detach().new_zeros(blocks * VNNI_BLOCK, k)
    padded[:n] = weight.detach()
    shifted = (padded.to(torch.int16) + INT8_VNNI_OFFSET).to(torch.uint8)
    packed = shifted.view(blocks, VNNI_BLOCK, k // INT8_VNNI_K, INT8_VNNI_K)
    return packed.permute(0, 2, 1, 3).contiguous()


def unpack_int8_vnni(packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """The ``[out_features, K]`` int8 weight ``pack_int8_vnni`` packed."""
    blocks, quads = packed.shape[0], packed.shape[1]
    rows = packed.permute(0, 2, 1, 3).reshape(blocks * VNNI_BLOCK, quads * INT8_VNNI_K)
    return (rows[:out_features].to(torch.int16) - INT8_VNNI_OFFSET).to(torch.int8)


def is_int8_vnni(weight: torch.Tensor) -> bool:
    """An int8 weight ``pack_int8_vnni`` packed (4-D uint8; the plain one is 2-D int8)."""
    return weight.dim() == 4 and weight.dtype == torch.uint8


# ---- INT4 -------------------------------------------------------------------------------


def int4_cpu_supports(out_features: int, in_features: int, group_size: int) -> bool:
    """Shapes torch's CPU int4 kernel takes (whole blocks of 64 output rows)."""
    return (
        out_features % INT4_BLOCK_N == 0
        and group_size in INT4_GROUP_SIZES
        and in_features % group_size == 0
    )


def pack_int4_cpu(
    q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """membound's int4 weight (``q [K, N]`` values 0..15, ``scales``/``zeros`` [K // G, N]) ->
    (packed [N, K // 2] uint8, scales_and_zeros [K // G, N, 2] bf16) for the CPU kernel."""
    k, n = q.shape
    if n % INT4_BLOCK_N or k % 2:
        raise ValueError(f"int4 CPU packing needs N % {INT4_BLOCK_N} == 0 and even K; "
                         f"got K={k}, N={n}")  # fmt: skip
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
        q.t().to(torch.int32).contiguous(), 1
    )
    s = scales.to(torch.float32)
    z = (8.0 - zeros.to(torch.float32)) * s  # (q - z) s = (q - 8) s + (8 - z) s
    return packed, torch.stack([s, z], dim=-1).to(KERNEL_DTYPE).contiguous()


def dequantize_int4_cpu(
    packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int
) -> torch.Tensor:
    """W [N, K] bf16 from the CPU kernel's layout (what the kernel multiplies with)."""
    n = packed.shape[0]
    k = packed.shape[1] * 2
    b = packed.reshape(n // INT4_BLOCK_N, k, INT4_BLOCK_N // 2)  # [N / 64, K, 32]
    q = torch.cat([b & 0xF, b >> 4], dim=2)  # [N / 64, K, 64]: low nibbles rows 0..31
    q = q.transpose(1, 2).reshape(n, k // group_size, group_size)  # [N, K / G, G]
    s = scales_and_zeros[..., 0].t().unsqueeze(-1)  # [N, K / G, 1]
    z = scales_and_zeros[..., 1].t().unsqueeze(-1)
    w = (q.to(KERNEL_DTYPE) - 8).mul_(s).add_(z)  # (q - 8) s + z, broadcast per group
    return w.reshape(n, k)


def int4_cpu_linear(
    x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int
) -> torch.Tensor:
    """x [M, K] -> [M, N] bf16 through the packed kernel (few rows) or dequantize + GEMM."""
    x = to_kernel_dtype(x)
    if x.shape[0] > INT4_KERNEL_MAX_ROWS:
        return F.linear(x, dequantize_int4_cpu(packed, scales_and_zeros, group_size))
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros)


def int4_cpu_linear_ref(
    x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int
) -> torch.Tensor:
    """The reference in float32 from membound's layout: q [K, N] 0..15, scales/zeros
    [K // G, N]; W[k, n] = (q - z) * s."""
    g = torch.arange(q.shape[0], device=q.device) // group_size
    w = (q.to(torch.float32) - zeros.to(torch.float32)[g]) * scales.to(torch.float32)[g]
    return x.to(torch.float32) @ w  # [M, N]
