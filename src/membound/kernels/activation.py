"""SiLU-and-mul, the gated activation of Llama-family MLPs, in one pass.

    x: [..., 2 * d] holding gate then up  ->  silu(gate) * up: [..., d]

Numerics follow torch: silu in float32 rounded to the input dtype, then the product in the
input dtype. Grid: (rows, column blocks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from membound.kernels.triton_utils import (
    FLOAT_DTYPES,
    cdiv,
    check,
    check_tensor,
    launch,
    next_pow2,
    tl,
    triton,
)


@triton.jit
def _silu_and_mul_kernel(
    x_ptr, out_ptr, d, stride_x, stride_o, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + d + cols, mask=mask, other=0.0)
    act = (gate / (1.0 + tl.exp(-gate))).to(up.dtype)
    tl.store(out_ptr + row * stride_o + cols, act * up, mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(x[..., :d]) * x[..., d:] (Triton); a new [..., d] tensor."""
    check_tensor("x", x, None, FLOAT_DTYPES, last_dim_contiguous=True)
    check(x.dim() >= 1 and x.shape[-1] % 2 == 0,
          f"x's last dim must be even (gate then up), got shape {tuple(x.shape)}")
    d = x.shape[-1] // 2
    out = torch.empty((*x.shape[:-1], d), dtype=x.dtype, device=x.device)
    x2 = x.reshape(-1, 2 * d)  # [rows, 2 * d]
    o2 = out.view(-1, d)  # [rows, d]
    if x2.shape[0] == 0 or d == 0:
        return out
    block = min(1024, next_pow2(d)) if x.device.type != "cpu" else next_pow2(d)
    launch(
        _silu_and_mul_kernel, (x2.shape[0], cdiv(d, block)), x.device,
        x2, o2, d, x2.stride(0), o2.stride(0), BLOCK=block,
    )
    return out


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """x: [..., 2 * d] holding gate then up -> silu(gate) * up: [..., d]."""
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]
