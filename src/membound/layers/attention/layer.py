"""The attention layer: stores new K/V into the paged cache, then attends through block tables."""

from __future__ import annotations

import torch
from torch import nn

from membound.kernels.paged_attention import (
    gather_seq_kv,
    paged_decode_attention_ref,
    prefill_attention_ref,
    store_kv_ref,
)
from membound.layers.attention.metadata import AttentionMetadata


class Attention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor | None,
        md: AttentionMetadata,
    ) -> torch.Tensor:
        """q [T, H, D], k/v [T, KVH, D] -> [T, H * D]."""
        if kv_cache is not None:
            assert md.slot_mapping is not None
            store_kv_ref(k, v, kv_cache, md.slot_mapping)
        out = torch.empty_like(q)
        if md.num_decodes:
            assert kv_cache is not None and md.decode_block_tables is not None
            idx = md.decode_token_idx
            out[idx] = paged_decode_attention_ref(
                q[idx], kv_cache, md.decode_block_tables, md.decode_mask, self.scale
            )
        for p in md.prefills:
            if kv_cache is not None and p.block_table is not None:
                keys, values = gather_seq_kv(kv_cache, p.block_table, p.seq_len)
            else:
                keys, values = k[p.token_start : p.token_end], v[p.token_start : p.token_end]
            out[p.token_start : p.token_end] = prefill_attention_ref(
                q[p.token_start : p.token_end], keys, values, p.mask, self.scale
            )
        return out.flatten(1)
