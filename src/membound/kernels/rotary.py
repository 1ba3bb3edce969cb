"""Rotary position embedding applied in place to q and k (NeoX / HF "rotate_half" layout).

    q: [num_tokens, num_heads, head_dim]   k: [num_tokens, num_kv_heads, head_dim]  (strided
       views of the fused QKV output are fine; the last dim must be contiguous)
    cos, sin: [num_tokens, head_dim // 2]  float32 rows of RotaryEmbedding's table

    x = | x1 (first half) | x2 (second half) |  ->  | x1 cos - x2 sin | x2 cos + x1 sin |

The frequencies live in the cos/sin rows, so default, linear, llama3 and dynamic-NTK scaling
all come for free. Like HF, cos/sin are first rounded to the input dtype; the rotation is
computed in float32 and rounded once. One program per token rotates all its q and k heads.
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
def _rotate_heads(ptr, tok, stride_t, stride_h, c, s, NUM_HEADS: tl.constexpr,
                  H_PAD: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr):
    h = tl.arange(0, H_PAD)
    i = tl.arange(0, HALF_PAD)
    mask = (h < NUM_HEADS)[:, None] & (i < HALF)[None, :]
    base = ptr + tok * stride_t + h[:, None] * stride_h + i[None, :]  # [H_PAD, HALF_PAD]
    x1 = tl.load(base, mask=mask, other=0.0)
    x2 = tl.load(base + HALF, mask=mask, other=0.0)
    c = c.to(x1.dtype).to(tl.float32)[None, :]
    s = s.to(x1.dtype).to(tl.float32)[None, :]
    f1 = x1.to(tl.float32)
    f2 = x2.to(tl.float32)
    tl.store(base, (f1 * c - f2 * s).to(x1.dtype), mask=mask)
    tl.store(base + HALF, (f2 * c + f1 * s).to(x1.dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, cos_ptr, sin_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_ct, stride_st,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, H_PAD: tl.constexpr,
    KVH_PAD: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, HALF_PAD)
    c = tl.load(cos_ptr + tok * stride_ct + i, mask=i < HALF, other=0.0)
    s = tl.load(sin_ptr + tok * stride_st + i, mask=i < HALF, other=0.0)
    _rotate_heads(q_ptr, tok, stride_qt, stride_qh, c, s, NUM_HEADS, H_PAD, HALF, HALF_PAD)
    _rotate_heads(k_ptr, tok, stride_kt, stride_kh, c, s, NUM_KV_HEADS, KVH_PAD, HALF, HALF_PAD)


def _check(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    dev = q.device
    check_tensor("q", q, 3, FLOAT_DTYPES, last_dim_contiguous=True)
    check_tensor("k", k, 3, (q.dtype,), dev, last_dim_contiguous=True)
    check(k.shape[0] == q.shape[0] and k.shape[2] == q.shape[2],
          f"k {tuple(k.shape)} does not match q {tuple(q.shape)}")
    check(q.shape[2] % 2 == 0, f"head_dim must be even, got {q.shape[2]}")
    for name, t in (("cos", cos), ("sin", sin)):
        check_tensor(name, t, 2, FLOAT_DTYPES, dev, last_dim_contiguous=True)
        check(tuple(t.shape) == (q.shape[0], q.shape[2] // 2),
              f"{name} has shape {tuple(t.shape)}, expected {(q.shape[0], q.shape[2] // 2)}")


def rotary_embedding(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate q and k in place (Triton)."""
    _check(q, k, cos, sin)
    num_tokens, num_heads, head_dim = q.shape
    if num_tokens == 0:
        return
    half = head_dim // 2
    launch(
        _rotary_kernel, (num_tokens,), q.device,
        q, k, cos, sin,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), sin.stride(0),
        NUM_HEADS=num_heads, NUM_KV_HEADS=k.shape[1], H_PAD=next_pow2(num_heads),
        KVH_PAD=next_pow2(k.shape[1]), HALF=half, HALF_PAD=next_pow2(half),
    )


def rotate_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [num_tokens, num_heads, head_dim]; cos/sin: [num_tokens, head_dim // 2] -> rotated
    copy (HF numerics: cos/sin in x's dtype, products in x's dtype)."""
    half = x.shape[-1] // 2
    cos = cos.unsqueeze(1).to(x.dtype)  # [num_tokens, 1, half]
    sin = sin.unsqueeze(1).to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def rotary_embedding_ref(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> None:
    """Plain torch, the same contract as ``rotary_embedding`` (in place)."""
    q.copy_(rotate_ref(q, cos, sin))
    k.copy_(rotate_ref(k, cos, sin))
