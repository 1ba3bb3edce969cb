"""KV store: new K/V rows into their slots of the paged cache.

    key, value:   [num_tokens, num_kv_heads, head_dim]   (any strides; last dim contiguous)
    kv_cache:     [2, num_blocks, block_size, num_kv_heads, head_dim]   (0 = K, 1 = V)
    slot_mapping: [num_tokens] int; slot = block * block_size + offset; a negative slot
                  (padding rows of a CUDA-graph batch) is skipped
    k_scale, v_scale: an FP8 cache stores saturate(x / scale) (kernels/kv_quant.py); 1.0
                  (the only value allowed) for a cache in a float dtype

One program per token copies all its K and V heads: one read of the new rows, one write into
the cache, nothing else.
"""

from __future__ import annotations

import torch

from membound.kernels.kv_quant import (
    FP8_KV_DTYPE,
    FP8_MAX,
    check_kv_scales,
    is_fp8,
    quantize_kv_ref,
)
from membound.kernels.triton_utils import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check,
    check_tensor,
    launch,
    next_pow2,
    tl,
    triton,
)


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, cache_k_ptr, cache_v_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cb, stride_ct, stride_ch, k_scale, v_scale,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    H_PAD: tl.constexpr, D_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr, FP8: tl.constexpr,
):
    tok = tl.program_id(0)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    if slot < 0:
        return
    h = tl.arange(0, H_PAD)
    d = tl.arange(0, D_PAD)
    mask = (h < NUM_KV_HEADS)[:, None] & (d < HEAD_DIM)[None, :]
    blk = slot // BLOCK_SIZE
    dst = blk * stride_cb + (slot % BLOCK_SIZE) * stride_ct + h[:, None] * stride_ch + d[None, :]
    src_k = tok.to(tl.int64) * stride_kt + h[:, None] * stride_kh + d[None, :]
    src_v = tok.to(tl.int64) * stride_vt + h[:, None] * stride_vh + d[None, :]
    k = tl.load(k_ptr + src_k, mask=mask)
    v = tl.load(v_ptr + src_v, mask=mask)
    if FP8:  # saturate: E4M3 has no infinity, an out-of-range value would become NaN
        k = tl.clamp(k.to(tl.float32) / k_scale, -FP8_MAX, FP8_MAX)
        v = tl.clamp(v.to(tl.float32) / v_scale, -FP8_MAX, FP8_MAX)
    tl.store(cache_k_ptr + dst, k.to(cache_k_ptr.dtype.element_ty), mask=mask)
    tl.store(cache_v_ptr + dst, v.to(cache_v_ptr.dtype.element_ty), mask=mask)


def _check_store(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
    k_scale: float, v_scale: float,
) -> None:
    dev = key.device
    check_tensor("key", key, 3, FLOAT_DTYPES, last_dim_contiguous=True)
    check_tensor("value", value, 3, FLOAT_DTYPES, dev, last_dim_contiguous=True)
    check_tensor("kv_cache", kv_cache, 5, (*FLOAT_DTYPES, FP8_KV_DTYPE), dev)
    check_kv_scales(kv_cache.dtype, k_scale, v_scale)
    check_tensor("slot_mapping", slot_mapping, 1, INDEX_DTYPES, dev)
    check(key.shape == value.shape, f"key {tuple(key.shape)} != value {tuple(value.shape)}")
    check(kv_cache.shape[0] == 2, f"kv_cache dim 0 must be 2 (K, V), got {kv_cache.shape[0]}")
    check(
        tuple(kv_cache.shape[3:]) == tuple(key.shape[1:]),
        f"kv_cache heads/head_dim {tuple(kv_cache.shape[3:])} != key's {tuple(key.shape[1:])}",
    )
    check(slot_mapping.shape[0] == key.shape[0],
          f"slot_mapping has {slot_mapping.shape[0]} slots for {key.shape[0]} tokens")
    check(kv_cache[0].stride(-1) == 1 and kv_cache.stride(1) == kv_cache[1].stride(0),
          f"kv_cache must be contiguous in head_dim, got strides {kv_cache.stride()}")


def store_kv(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
    k_scale: float = 1.0, v_scale: float = 1.0,
) -> None:
    """Write ``key``/``value`` rows into their slots of ``kv_cache``, in place (Triton)."""
    _check_store(key, value, kv_cache, slot_mapping, k_scale, v_scale)
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    cache_k, cache_v = kv_cache[0], kv_cache[1]  # [num_blocks, block_size, kv_heads, D]
    launch(
        _store_kv_kernel, (num_tokens,), key.device,
        key, value, cache_k, cache_v, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        cache_k.stride(0), cache_k.stride(1), cache_k.stride(2), float(k_scale), float(v_scale),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        H_PAD=next_pow2(num_kv_heads), D_PAD=next_pow2(head_dim), BLOCK_SIZE=kv_cache.shape[2],
        FP8=is_fp8(kv_cache.dtype),
    )


def store_kv_ref(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
    k_scale: float = 1.0, v_scale: float = 1.0,
) -> None:
    """Plain torch: the same contract as ``store_kv`` (negative slots skipped)."""
    num_kv_heads, head_dim = key.shape[1], key.shape[2]
    if slot_mapping.numel() and bool((slot_mapping < 0).any()):
        keep = slot_mapping >= 0
        key, value, slot_mapping = key[keep], value[keep], slot_mapping[keep]
    k_flat = kv_cache[0].view(-1, num_kv_heads, head_dim)  # [num_blocks * block_size, KVH, D]
    v_flat = kv_cache[1].view(-1, num_kv_heads, head_dim)
    if is_fp8(kv_cache.dtype):  # index_copy_ has no fp8 kernel: copy the bytes
        k_flat, v_flat = k_flat.view(torch.uint8), v_flat.view(torch.uint8)
    slots = slot_mapping.long()
    k_flat.index_copy_(0, slots, quantize_kv_ref(key, k_scale, kv_cache.dtype).view(k_flat.dtype))
    v_flat.index_copy_(0, slots, quantize_kv_ref(value, v_scale, kv_cache.dtype).view(v_flat.dtype))
