"""RMSNorm, and RMSNorm fused with the residual add (one pass over the row instead of two).

    x, residual: [..., hidden]          weight: [hidden]
    rms_norm(x)                      -> weight * (x / rms(x))
    fused_add_rms_norm(x, residual)  -> (rms_norm(x + residual), x + residual)

Numerics follow Hugging Face: the add happens in the input dtype, the normalisation in
float32, the product with the weight in the result dtype (``weight.dtype`` promoted with
``x.dtype``). One program per row; rows may be strided (a head of q/k for qk-norm).
"""

from __future__ import annotations

import torch

from membound.kernels.triton_utils import (
    FLOAT_DTYPES,
    check,
    check_tensor,
    launch,
    next_pow2,
    tl,
    triton,
)


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, eps,
    stride_xa, stride_xb, stride_ra, stride_rb, stride_oa, stride_ob, stride_sa, stride_sb,
    N: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):
    a = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(x_ptr + a * stride_xa + b * stride_xb + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + a * stride_ra + b * stride_rb + cols, mask=mask, other=0.0)
        x = (x + r).to(x_ptr.dtype.element_ty)  # the add rounds in the input dtype, like torch
        tl.store(res_out_ptr + a * stride_sa + b * stride_sb + cols, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, 0) / N
    y = (xf * tl.rsqrt(var + eps)).to(x_ptr.dtype.element_ty)  # [BLOCK] in the input dtype
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    out_ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + a * stride_oa + b * stride_ob + cols, w.to(out_ty) * y.to(out_ty),
             mask=mask)


def _as_3d(t: torch.Tensor) -> torch.Tensor:
    """[..., N] -> [A, B, N] without a copy when the leading dims allow it."""
    if t.dim() == 3:
        return t
    if t.dim() == 2:
        return t.unsqueeze(1)  # [rows, 1, N]
    return t.reshape(-1, 1, t.shape[-1])  # [rows, 1, N]


def _check(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None) -> None:
    check_tensor("x", x, None, FLOAT_DTYPES, last_dim_contiguous=True)
    check(x.dim() >= 1, "x must have at least one dim")
    check_tensor("weight", weight, 1, FLOAT_DTYPES, x.device, last_dim_contiguous=True)
    check(weight.shape[0] == x.shape[-1],
          f"weight has {weight.shape[0]} entries for rows of {x.shape[-1]}")
    if residual is not None:
        check_tensor("residual", residual, None, (x.dtype,), x.device, last_dim_contiguous=True)
        check(residual.shape == x.shape,
              f"residual {tuple(residual.shape)} != x {tuple(x.shape)}")


def _run(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    out = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    res_out = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else None
    if x.numel() == 0:
        return out, res_out
    x3, o3 = _as_3d(x), _as_3d(out)  # [A, B, N]
    r3 = _as_3d(residual) if residual is not None else x3
    s3 = _as_3d(res_out) if res_out is not None else o3
    n = x.shape[-1]
    launch(
        _rms_norm_kernel, (x3.shape[0], x3.shape[1]), x.device,
        x3, r3, weight, o3, s3, eps,
        x3.stride(0), x3.stride(1), r3.stride(0), r3.stride(1),
        o3.stride(0), o3.stride(1), s3.stride(0), s3.stride(1),
        N=n, BLOCK=next_pow2(n), HAS_RESIDUAL=residual is not None,
        num_warps=4 if n <= 2048 else (8 if n <= 8192 else 16),
    )
    return out, res_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim (Triton); a new tensor."""
    _check(x, weight, None)
    return _run(x, weight, eps, None)[0]


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual) in one pass (Triton); new tensors."""
    _check(x, weight, residual)
    out, res_out = _run(x, weight, eps, residual)
    assert res_out is not None
    return out, res_out


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF semantics: normalise in float32, multiply by the weight in the input dtype."""
    dtype = x.dtype
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def fused_add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch, the same contract as ``fused_add_rms_norm``."""
    x = x + residual
    return rms_norm_ref(x, weight, eps), x
