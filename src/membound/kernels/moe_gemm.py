"""Grouped GEMM over tokens sorted by expert: the Mixture-of-Experts MLP's two matmuls.

Each token picks ``top_k`` experts; a (token, slot) pair is one row of work, pair
``p = token * top_k + slot``. ``moe_align`` sorts the pairs by expert and pads each expert's
run to a multiple of ``block_m`` rows, so every block of ``block_m`` sorted rows belongs to
one expert and a program multiplies it by that expert's weight only:

    sorted_token_ids  | e0 pairs ... pad | e1 pairs ... pad pad | ... | unused (pad) |
    expert_ids        |   e0 (block 0)   |  e1 (block 1, 2)     | ... |  -1 (skip)   |
    pad rows hold num_pairs; a block of expert -1 is skipped; sizes are the worst case
    (num_pairs + experts * (block_m - 1)), so nothing waits on the host (CUDA graphs)

    moe_gemm(a, w, ...):  out[p] = a[p // a_row_div] @ w[expert(p)]^T (* topk_weights[p])
      a   [M, K]   tokens (a_row_div = top_k: the gate/up GEMM) or pairs (a_row_div = 1)
      w   [E, N, K] one weight per expert, like nn.Linear's [out, in]
      out [num_pairs, N]; rows of pairs no block covers (expert parallelism: experts held
          by another rank) are left as they are: pass a zeroed ``out``

``moe_gemm_ref`` (plain torch, the CPU path) has the same signature; the Triton kernel runs
in the interpreter on CPU tensors (tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from membound.kernels.triton_utils import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    cdiv,
    check,
    check_shape,
    check_tensor,
    dot_precision,
    launch,
    tl,
    triton,
)

BLOCK_M = 16  # sorted rows per program (tl.dot needs 16); first guess, not tuned on a GPU


@dataclass(slots=True)
class MoEAlignment:
    sorted_token_ids: torch.Tensor  # [num_blocks * block_m] int32: pair ids; num_pairs = pad
    expert_ids: torch.Tensor  # [num_blocks] int32: the (local) expert of each block, -1 = none
    num_pairs: int
    block_m: int


def moe_align(
    topk_ids: torch.Tensor,
    num_experts: int,
    block_m: int = BLOCK_M,
    expert_map: torch.Tensor | None = None,
) -> MoEAlignment:
    """Sort the (token, slot) pairs of ``topk_ids`` [T, top_k] by expert, padded per expert.

    ``expert_map`` [global experts] -> local expert or -1 (expert parallelism): pairs of
    experts another rank holds get no block. All on the device, no host sync."""
    dev = topk_ids.device
    num_pairs = topk_ids.numel()
    ids = topk_ids.reshape(-1).to(torch.int64)
    if expert_map is not None:
        ids = expert_map.to(torch.int64)[ids]
    ids = torch.where(ids < 0, num_experts, ids)  # dropped pairs sort last
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=dev)
    counts = counts.scatter_add_(0, ids, torch.ones_like(ids))[:num_experts]  # no host sync
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    max_rows = num_pairs + num_experts * (block_m - 1)
    max_rows = cdiv(max_rows, block_m) * block_m
    order = torch.argsort(ids, stable=True)
    sorted_experts = ids[order]
    keep = sorted_experts < num_experts
    e = sorted_experts.clamp(max=num_experts - 1)
    run_start = torch.cumsum(counts, 0) - counts  # first sorted position of each expert
    dest = (padded_end - padded)[e] + torch.arange(num_pairs, device=dev) - run_start[e]
    dest = torch.where(keep, dest, max_rows)  # dropped pairs land in a spare slot
    buf = torch.full((max_rows + 1,), num_pairs, dtype=torch.int64, device=dev)
    buf.scatter_(0, dest, order)
    starts = torch.arange(0, max_rows, block_m, device=dev)
    block_expert = torch.searchsorted(padded_end, starts, right=True)
    block_expert = torch.where(block_expert < num_experts, block_expert, -1)
    return MoEAlignment(
        buf[:max_rows].to(torch.int32), block_expert.to(torch.int32), num_pairs, block_m
    )


# ---- reference (the CPU path and the oracle) ------------------------------------------------


def moe_gemm_ref(
    a: torch.Tensor,
    w: torch.Tensor,
    sorted_token_ids: torch.Tensor,
    expert_ids: torch.Tensor,
    num_pairs: int,
    block_m: int,
    a_row_div: int,
    topk_weights: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """out[p] = a[p // a_row_div] @ w[expert(p)]^T, times topk_weights[p] (fp32) if given."""
    if out is None:
        out = torch.zeros((num_pairs, w.shape[1]), dtype=a.dtype, device=a.device)
    blocks = sorted_token_ids.to(torch.int64).view(-1, block_m)  # [num_blocks, block_m]
    weights = topk_weights.reshape(-1) if topk_weights is not None else None
    for e in torch.unique(expert_ids[expert_ids >= 0]).tolist():
        pairs = blocks[expert_ids == e].reshape(-1)
        pairs = pairs[pairs < num_pairs]
        y = F.linear(a[pairs // a_row_div], w[e])  # [rows, N]
        if weights is not None:
            y = (y.float() * weights[pairs, None].float()).to(out.dtype)
        out[pairs] = y
    return out


# ---- Triton kernel --------------------------------------------------------------------------


@triton.jit
def _moe_gemm_kernel(
    a_ptr, w_ptr, out_ptr, sorted_ptr, expert_ids_ptr, weights_ptr,
    num_pairs, N, K, a_row_div,
    stride_am, stride_ak, stride_we, stride_wn, stride_wk, stride_om, stride_on,
    MUL_WEIGHT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    if expert < 0:
        return
    pairs = tl.load(sorted_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = pairs < num_pairs
    a_rows = pairs // a_row_div
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        a = tl.load(a_ptr + a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        b = tl.load(w_ptr + expert * stride_we + offs_n[None, :] * stride_wn
                    + offs_k[:, None] * stride_wk,
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)  # [BLOCK_K, BLOCK_N]
        acc += tl.dot(a, b, input_precision=DOT_PRECISION)
    if MUL_WEIGHT:
        acc = acc * tl.load(weights_ptr + pairs, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    tl.store(out_ptr + pairs[:, None] * stride_om + offs_n[None, :] * stride_on,
             acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


def _check(a, w, sorted_token_ids, expert_ids, num_pairs, block_m, a_row_div, topk_weights):  # type: ignore[no-untyped-def]
    check_tensor("a", a, 2, FLOAT_DTYPES, last_dim_contiguous=True)
    dev = a.device
    check_tensor("w", w, 3, (a.dtype,), dev)
    check(w.shape[2] == a.shape[1], f"w has K={w.shape[2]} but a has K={a.shape[1]}")
    check_tensor("sorted_token_ids", sorted_token_ids, 1, INDEX_DTYPES, dev)
    check_tensor("expert_ids", expert_ids, 1, INDEX_DTYPES, dev)
    check(block_m >= 16 and block_m & (block_m - 1) == 0,
          f"block_m must be a power of two >= 16, got {block_m}")
    check_shape("sorted_token_ids", sorted_token_ids, (expert_ids.numel() * block_m,))
    check(a_row_div >= 1 and a.shape[0] * a_row_div == num_pairs,
          f"a has {a.shape[0]} rows; with a_row_div={a_row_div} that is not {num_pairs} pairs")
    if topk_weights is not None:
        check_tensor("topk_weights", topk_weights, None, FLOAT_DTYPES, dev)
        check(topk_weights.numel() == num_pairs and topk_weights.is_contiguous(),
              f"topk_weights must be contiguous with {num_pairs} elements")


def moe_gemm(
    a: torch.Tensor,
    w: torch.Tensor,
    sorted_token_ids: torch.Tensor,
    expert_ids: torch.Tensor,
    num_pairs: int,
    block_m: int,
    a_row_div: int,
    topk_weights: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton version of ``moe_gemm_ref`` (same signature)."""
    _check(a, w, sorted_token_ids, expert_ids, num_pairs, block_m, a_row_div, topk_weights)
    n, k = w.shape[1], w.shape[2]
    if out is None:
        out = torch.zeros((num_pairs, n), dtype=a.dtype, device=a.device)
    check_tensor("out", out, 2, (a.dtype,), a.device)
    check_shape("out", out, (num_pairs, n))
    if num_pairs == 0 or expert_ids.numel() == 0:
        return out
    bn = 64 if n >= 64 else 32
    bk = 64 if k >= 64 else 32
    launch(
        _moe_gemm_kernel, (expert_ids.numel(), cdiv(n, bn)), a.device,
        a, w, out, sorted_token_ids, expert_ids, topk_weights if topk_weights is not None else a,
        num_pairs, n, k, a_row_div,
        a.stride(0), a.stride(1), w.stride(0), w.stride(1), w.stride(2),
        out.stride(0), out.stride(1),
        MUL_WEIGHT=topk_weights is not None, BLOCK_M=block_m, BLOCK_N=bn, BLOCK_K=bk,
        DOT_PRECISION=dot_precision(a.dtype),
    )
    return out
