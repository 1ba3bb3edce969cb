"""INT4 weight-only GEMM: y = x @ dequant(W), dequantized inside the kernel (small batches).

membound's one int4 layout (AWQ, GPTQ and round-to-nearest checkpoints are all converted to
it when they load), K-packed like GPTQ so a tile of K rows unpacks with shifts:

    qweight [K // 8, N] int32    nibble j (bits 4j..4j+3) of qweight[i, n] is q[8i + j, n]
    scales  [K // G, N] float    zeros [K // G, N] uint8 (0..16: GPTQ v1 zeros can reach 16)
    perm    [K] int32 | None     act-order: the kernel reads x[:, perm[k]] for weight row k
    W[k, n] = (q[k, n] - zeros[k // G, n]) * scales[k // G, n]          (G = group_size)

Decode and small batches (up to ``FUSED_MAX_ROWS`` rows) are memory-bound: reading 4-bit
weights instead of 16-bit is the win, so ``int4_gemm`` streams the packed tiles and never
materialises W. Larger batches are compute-bound: ``int4_gemm`` then dequantizes W once per
call straight into x's dtype (``int4_dequantize``, a Triton kernel: no float32 copy of the
whole weight) and calls the BLAS GEMM. ``int4_gemm_ref`` is the CPU path and the oracle. Split-K spreads a GEMV over more programs than N / BLOCK_N so a big GPU
is filled (partial sums are added atomically in fp32).
"""

from __future__ import annotations

import torch

from membound.kernels.triton_utils import (
    FLOAT_DTYPES,
    cdiv,
    check,
    check_shape,
    check_tensor,
    dot_precision,
    launch,
    num_sms,
    tl,
    triton,
)

PACK = 8  # 4-bit values per int32
FUSED_MAX_ROWS = 16  # rows up to which the fused kernel beats dequantize + GEMM (tune on a GPU)


# ---- packing (shared by the loaders and the tests) ----------------------------------------


def pack_int4(q: torch.Tensor, dim: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """Pack 4-bit values (0..15, any int dtype) 8 per int32 along ``dim``.

    Nibble j of a packed word holds element ``order[j]`` of its group of 8 (sequential order
    by default; AWQ interleaves)."""
    dim = dim % q.dim()
    check(q.shape[dim] % PACK == 0, f"dim {dim} of size {q.shape[dim]} is not a multiple of 8")
    q = q.to(torch.int64).movedim(dim, -1)
    q = q.reshape(*q.shape[:-1], q.shape[-1] // PACK, PACK)  # [..., n // 8, 8]
    if order is not None:
        q = q[..., list(order)]
    shifts = torch.arange(0, 32, 4, device=q.device, dtype=torch.int64)
    words = ((q & 0xF) << shifts).sum(-1)  # [..., n // 8], 0 .. 2**32 - 1
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return words.movedim(-1, dim).contiguous()


def unpack_int4(packed: torch.Tensor, dim: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """Inverse of ``pack_int4``: int32 words -> uint8 values 0..15, 8 per word along ``dim``."""
    dim = dim % packed.dim()
    w = packed.movedim(dim, -1).to(torch.int64)
    shifts = torch.arange(0, 32, 4, device=packed.device, dtype=torch.int64)
    q = (w.unsqueeze(-1) >> shifts) & 0xF  # [..., n // 8, 8]: nibble j at index j
    if order is not None:
        inverse = [0] * PACK
        for nibble, element in enumerate(order):
            inverse[element] = nibble
        q = q[..., inverse]
    q = q.reshape(*q.shape[:-2], q.shape[-2] * PACK).to(torch.uint8)
    return q.movedim(-1, dim).contiguous()


# ---- reference (the CPU path, the large-batch path and the oracle) -------------------------


def dequantize_int4_ref(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int
) -> torch.Tensor:
    """W [K, N] in float32 from the packed layout (rows in weight order, not x's)."""
    q = unpack_int4(qweight, 0).to(torch.float32)  # [K, N]
    z = zeros.to(torch.float32).repeat_interleave(group_size, 0)  # [K, N]
    s = scales.to(torch.float32).repeat_interleave(group_size, 0)
    return (q - z) * s


def int4_gemm_ref(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    perm: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [M, K] -> x[:, perm] @ W  [M, N] in x.dtype (W rounded to x.dtype, as the kernel)."""
    w = dequantize_int4_ref(qweight, scales, zeros, group_size).to(x.dtype)  # [K, N]
    xs = x if perm is None else x.index_select(1, perm.to(torch.int64))
    y = xs @ w
    if out is None:
        return y
    out.copy_(y)
    return out


# ---- Triton kernel --------------------------------------------------------------------------


@triton.jit
def _int4_gemm_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, perm_ptr, out_ptr,
    M, N, K_PER_SPLIT,
    stride_xm, stride_xk, stride_qk, stride_qn, stride_sg, stride_sn, stride_zg, stride_zn,
    stride_om, stride_on,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_PERM: tl.constexpr, ATOMIC: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_start = pid_k * K_PER_SPLIT
    for k0 in range(k_start, k_start + K_PER_SPLIT, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # weight rows of this tile (one group: G % BK == 0)
        if HAS_PERM:
            src_k = tl.load(perm_ptr + offs_k)  # act-order: the x column feeding weight row k
        else:
            src_k = offs_k
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + src_k[None, :] * stride_xk,
                    mask=m_mask[:, None], other=0.0)  # [BLOCK_M, BLOCK_K]
        qw = tl.load(qw_ptr + (offs_k[:, None] // 8) * stride_qk + offs_n[None, :] * stride_qn,
                     mask=n_mask[None, :], other=0)  # [BLOCK_K, BLOCK_N] int32, 8 rows per word
        q = (qw >> ((offs_k[:, None] % 8) * 4)) & 0xF
        g = k0 // GROUP
        s = tl.load(s_ptr + g * stride_sg + offs_n * stride_sn, mask=n_mask, other=0.0)
        z = tl.load(z_ptr + g * stride_zg + offs_n * stride_zn, mask=n_mask, other=0)
        w = (q - z[None, :].to(tl.int32)).to(tl.float32) * s[None, :].to(tl.float32)
        acc += tl.dot(x, w.to(x.dtype), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    mask = m_mask[:, None] & n_mask[None, :]
    if ATOMIC:
        tl.atomic_add(out_ptrs, acc, mask=mask)
    else:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _int4_dequant_kernel(
    qw_ptr, s_ptr, z_ptr, out_ptr, N,
    stride_qk, stride_qn, stride_sg, stride_sn, stride_zg, stride_zn, stride_ok, stride_on,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)  # within one group
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    qw = tl.load(qw_ptr + (offs_k[:, None] // 8) * stride_qk + offs_n[None, :] * stride_qn,
                 mask=n_mask[None, :], other=0)
    q = (qw >> ((offs_k[:, None] % 8) * 4)) & 0xF
    g = (tl.program_id(0) * BLOCK_K) // GROUP
    s = tl.load(s_ptr + g * stride_sg + offs_n * stride_sn, mask=n_mask, other=0.0)
    z = tl.load(z_ptr + g * stride_zg + offs_n * stride_zn, mask=n_mask, other=0)
    w = (q - z[None, :].to(tl.int32)).to(tl.float32) * s[None, :].to(tl.float32)
    tl.store(out_ptr + offs_k[:, None] * stride_ok + offs_n[None, :] * stride_on,
             w.to(out_ptr.dtype.element_ty), mask=n_mask[None, :])


def int4_dequantize(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """W [K, N] in ``dtype`` (Triton), the same values as ``dequantize_int4_ref`` rounded to
    ``dtype``: one pass over the packed weight, no float32 copy of it."""
    k, n = qweight.shape[0] * PACK, qweight.shape[1]
    check(k % group_size == 0, f"K={k} is not a multiple of group_size={group_size}")
    check_shape("scales", scales, (k // group_size, n))
    check_shape("zeros", zeros, (k // group_size, n))
    bk, bn = _block_k(group_size), 64
    out = torch.empty((k, n), dtype=dtype, device=qweight.device)
    launch(
        _int4_dequant_kernel, (k // bk, cdiv(n, bn)), qweight.device,
        qweight, scales, zeros, out, n,
        qweight.stride(0), qweight.stride(1), scales.stride(0), scales.stride(1),
        zeros.stride(0), zeros.stride(1), out.stride(0), out.stride(1),
        GROUP=group_size, BLOCK_N=bn, BLOCK_K=bk,
    )
    return out


def _block_k(group_size: int) -> int:
    """The largest of 64, 32, 16 dividing the group (a tile never straddles two groups)."""
    for bk in (64, 32, 16):
        if group_size % bk == 0:
            return bk
    raise ValueError(f"group_size {group_size} is not a multiple of 16; use int4_gemm_ref")


def kernel_supports(group_size: int) -> bool:
    return group_size % 16 == 0


def _split_k(m_tiles: int, n_tiles: int, k_tiles: int, device: torch.device) -> int:
    """Enough programs to fill the GPU (about 2 per SM), splitting K evenly."""
    target = 2 * num_sms(device)
    split = 1
    while m_tiles * n_tiles * split * 2 <= target and k_tiles % (split * 2) == 0 and split < 16:
        split *= 2
    return split


def _check(x, qweight, scales, zeros, group_size, perm) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    check_tensor("x", x, 2, FLOAT_DTYPES)
    dev = x.device
    check_tensor("qweight", qweight, 2, (torch.int32,), dev)
    check_tensor("scales", scales, 2, FLOAT_DTYPES, dev)
    check_tensor("zeros", zeros, 2, (torch.uint8,), dev)
    m, k = x.shape
    n = qweight.shape[1]
    check(k % group_size == 0, f"K={k} is not a multiple of group_size={group_size}")
    check_shape("qweight", qweight, (k // PACK, n))
    check_shape("scales", scales, (k // group_size, n))
    check_shape("zeros", zeros, (k // group_size, n))
    if perm is not None:
        check_tensor("perm", perm, 1, (torch.int32, torch.int64), dev)
        check_shape("perm", perm, (k,))
    return m, n, k


def int4_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    perm: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    split_k: int | None = None,
    fused: bool | None = None,
) -> torch.Tensor:
    """Triton version of ``int4_gemm_ref`` (same signature, plus ``split_k``: None = auto,
    and ``fused``: None = the fused kernel up to ``FUSED_MAX_ROWS`` rows, else
    ``int4_dequantize`` into x's dtype + the BLAS GEMM)."""
    m, n, k = _check(x, qweight, scales, zeros, group_size, perm)
    if not (fused if fused is not None else m <= FUSED_MAX_ROWS):
        w = int4_dequantize(qweight, scales, zeros, group_size, x.dtype)
        xs = x if perm is None else x.index_select(1, perm.to(torch.int64))
        if out is None:
            return xs @ w
        check_shape("out", out, (m, n))
        return torch.matmul(xs, w, out=out)
    bk = _block_k(group_size)
    bm = 16 if m <= 16 else 32  # tl.dot needs 16 rows; decode pads 1 -> 16 (free: memory-bound)
    bn = 64
    grid_mn = (cdiv(m, bm), cdiv(n, bn))
    split = split_k or _split_k(grid_mn[0], grid_mn[1], k // bk, x.device)
    check((k // bk) % split == 0, f"split_k={split} does not divide the {k // bk} K tiles")
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    check_shape("out", out, (m, n))
    target = torch.zeros((m, n), dtype=torch.float32, device=x.device) if split > 1 else out
    if m == 0:
        return out
    launch(
        _int4_gemm_kernel, (grid_mn[0], grid_mn[1], split), x.device,
        x, qweight, scales, zeros, perm if perm is not None else x, target,
        m, n, k // split,
        x.stride(0), x.stride(1), qweight.stride(0), qweight.stride(1),
        scales.stride(0), scales.stride(1), zeros.stride(0), zeros.stride(1),
        target.stride(0), target.stride(1),
        GROUP=group_size, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, HAS_PERM=perm is not None,
        ATOMIC=split > 1, DOT_PRECISION=dot_precision(x.dtype),
    )
    if split > 1:
        out.copy_(target)
    return out
