"""FP8 KV cache: how K/V values are stored in, and read back from, an 8-bit cache.

    stored = saturate(x / scale)          saturate: clamp to +-FP8_MAX, then round to E4M3
    read   = stored (as fp32) * scale

One scale per layer for K and one for V (per-tensor), fixed for the life of the engine:
from the checkpoint when it carries them (llm-compressor ``self_attn.k_scale`` /
``v_scale``, ModelOpt ``k_proj.k_scale`` / ``v_proj.v_scale``), else 1.0, as vLLM does. The
kernels fold the scales into arithmetic they already do (K's into the softmax scale, V's into
the accumulator), so an FP8 cache costs no extra pass over memory; with a model-dtype cache
both scales are 1.0 and nothing changes.

Plain torch here; the Triton kernels (kv_store, paged_attention, prefill_attention) do the
same inside their loads and stores.
"""

from __future__ import annotations

import torch

FP8_KV_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite E4M3 value; torch turns anything larger into NaN


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype == FP8_KV_DTYPE


def quantize_kv_ref(x: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """``x`` as stored in a cache of ``dtype``: scaled and saturated for FP8, else a cast."""
    if not is_fp8(dtype):
        return x.to(dtype)
    return (x.float() / scale).clamp_(-FP8_MAX, FP8_MAX).to(dtype)


def dequantize_kv_ref(x: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """Stored values back to ``dtype`` (the attention's): cast, then scale for FP8."""
    if not is_fp8(x.dtype):
        return x.to(dtype)
    return (x.float() * scale).to(dtype)


def check_kv_scales(cache_dtype: torch.dtype, k_scale: float, v_scale: float) -> None:
    """Scales other than 1.0 only make sense for an FP8 cache; they must be positive."""
    for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
        if not s > 0.0:
            raise ValueError(f"{name} must be a positive number, got {s}")
        if s != 1.0 and not is_fp8(cache_dtype):
            raise ValueError(
                f"{name}={s} was given for a {cache_dtype} KV cache; scales apply to an FP8 "
                "cache only (kv_cache_dtype='fp8')"
            )
