"""The attention layer: stores new K/V into the paged cache, then attends through block tables.

Decodes go to the paged decode kernel as one batch, prefill chunks to the varlen prefill
kernel as another; the backend (Triton or the torch references) is installed at start-up.

The layer owns its FP8 KV-cache scales (kernels/kv_quant.py): one for K and one for V, read
from the checkpoint when it carries them (``k_scale`` / ``v_scale``, optional), else 1.0.
They apply only when the cache it is handed is FP8; a cache in the model dtype ignores them.
"""

from __future__ import annotations

import torch
from torch import nn

from membound.kernels.kv_quant import is_fp8
from membound.layers.checkpoint_tensor import LazyTensor, materialize
from membound.layers.quantization.base import SCALAR_SHAPES, TensorSpec

from membound.kernels.cpu_attention import decode_bytes_per_token
from membound.layers.attention.backend import KernelBackend, KernelOps, kernel_ops
from membound.layers.attention.metadata import AttentionMetadata, DecodeBatch, PrefillBatch


class Attention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.k_scale = 1.0  # FP8 KV cache: stored K = K / k_scale (checkpoint or 1.0)
        self.v_scale = 1.0
        self.kv_scales_from_checkpoint = False
        self.kernel_backend = KernelBackend.TORCH
        self.ops: KernelOps = kernel_ops(self.kernel_backend)

    def set_kernel_backend(self, backend: KernelBackend) -> None:
        self.kernel_backend = backend
        self.ops = kernel_ops(backend)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor | None,
        md: AttentionMetadata,
    ) -> torch.Tensor:
        """q [T, H, D], k/v [T, KVH, D] -> [T, H * D]."""
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # [T, H, D]
        if kv_cache is None:
            if md.prefill is not None:
                self._varlen(q, k, v, md.prefill, md.sliding_window, out)
            return out.flatten(1)
        assert md.slot_mapping is not None
        scales = self.cache_scales(kv_cache)
        self.ops.store_kv(k, v, kv_cache, md.slot_mapping, **scales)
        if md.decode is not None:
            self._decode(q, kv_cache, md.decode, md.sliding_window, out, scales)
        if md.prefill is not None:
            self._prefill(q, kv_cache, md.prefill, md.sliding_window, out, scales)
        return out.flatten(1)  # [T, H * D]

    def cache_scales(self, kv_cache: torch.Tensor) -> dict[str, float]:
        """The scales a kernel needs for ``kv_cache``: this layer's for FP8, else 1.0."""
        if is_fp8(kv_cache.dtype):
            return {"k_scale": self.k_scale, "v_scale": self.v_scale}
        return {"k_scale": 1.0, "v_scale": 1.0}

    # ---- loading: the optional FP8 KV-cache scales of the checkpoint ------------------------
    def shard_ids(self) -> tuple[object, ...]:
        return (None,)

    def checkpoint_specs(self, shard_id: object = None) -> dict[str, TensorSpec]:
        return {s: TensorSpec(SCALAR_SHAPES, required=False) for s in ("k_scale", "v_scale")}

    def load_checkpoint_tensor(
        self, suffix: str, loaded: torch.Tensor | LazyTensor, shard_id: object = None,
        name: str = "?",
    ) -> None:
        value = float(materialize(loaded).float().reshape(-1)[0])
        if not value > 0.0:
            raise ValueError(f"checkpoint tensor {name} = {value}: a KV-cache scale must be > 0")
        setattr(self, suffix, value)
        self.kv_scales_from_checkpoint = True

    def process_weights_after_loading(self) -> None:
        """Nothing to lay out: the scales are plain numbers the kernels take as arguments."""

    def _decode(
        self, q: torch.Tensor, kv_cache: torch.Tensor, d: DecodeBatch, window: int | None,
        out: torch.Tensor, scales: dict[str, float],
    ) -> None:
        args = (kv_cache, d.block_tables, d.seq_lens, self.scale, window, d.num_splits)
        extra: dict[str, object] = dict(scales)
        if self.ops.plan_decode is not None:  # layer-independent work: once per step
            if d.plan is None:
                d.plan = self.ops.plan_decode(
                    d.block_tables, d.seq_lens, kv_cache.shape[2], window,
                    decode_bytes_per_token(kv_cache),
                )
            extra["plan"] = d.plan
        if d.token_range is not None:
            s, e = d.token_range
            self.ops.decode_attention(q[s:e], *args, out=out[s:e], **extra)
        else:
            out[d.token_idx] = self.ops.decode_attention(q[d.token_idx], *args, **extra)

    def _prefill(
        self, q: torch.Tensor, kv_cache: torch.Tensor, p: PrefillBatch, window: int | None,
        out: torch.Tensor, scales: dict[str, float],
    ) -> None:
        assert p.block_tables is not None
        args = (kv_cache, p.block_tables, p.query_start_loc, p.seq_lens, self.scale, window,
                p.max_query_len)  # fmt: skip
        if p.token_range is not None:
            s, e = p.token_range
            self.ops.prefill_attention(q[s:e], *args, out=out[s:e], **scales)
        else:
            out[p.token_idx] = self.ops.prefill_attention(q[p.token_idx], *args, **scales)

    def _varlen(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: PrefillBatch,
        window: int | None, out: torch.Tensor,
    ) -> None:
        """No KV cache: each sequence attends to its own new tokens only."""
        args = (p.query_start_loc, self.scale, window, p.max_query_len)
        if p.token_range is not None:
            s, e = p.token_range
            self.ops.varlen_attention(q[s:e], k[s:e], v[s:e], *args, out=out[s:e])
        else:
            idx = p.token_idx
            out[idx] = self.ops.varlen_attention(q[idx], k[idx], v[idx], *args)
