"""The attention layer: stores new K/V into the paged cache, then attends through block tables.

Decodes go to the paged decode kernel as one batch, prefill chunks to the varlen prefill
kernel as another; the backend (Triton or the torch references) is installed at start-up.
"""

from __future__ import annotations

import torch
from torch import nn

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
        self.ops.store_kv(k, v, kv_cache, md.slot_mapping)
        if md.decode is not None:
            self._decode(q, kv_cache, md.decode, md.sliding_window, out)
        if md.prefill is not None:
            self._prefill(q, kv_cache, md.prefill, md.sliding_window, out)
        return out.flatten(1)  # [T, H * D]

    def _decode(
        self, q: torch.Tensor, kv_cache: torch.Tensor, d: DecodeBatch, window: int | None,
        out: torch.Tensor,
    ) -> None:
        args = (kv_cache, d.block_tables, d.seq_lens, self.scale, window, d.num_splits)
        extra = {}
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
        out: torch.Tensor,
    ) -> None:
        assert p.block_tables is not None
        args = (kv_cache, p.block_tables, p.query_start_loc, p.seq_lens, self.scale, window,
                p.max_query_len)  # fmt: skip
        if p.token_range is not None:
            s, e = p.token_range
            self.ops.prefill_attention(q[s:e], *args, out=out[s:e])
        else:
            out[p.token_idx] = self.ops.prefill_attention(q[p.token_idx], *args)

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
