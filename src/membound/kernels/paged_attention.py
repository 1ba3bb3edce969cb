"""Paged attention, plain-torch references.

These are the CPU path and the oracle the Triton kernels (data-plane issue) are tested
against. KV cache layout, one tensor per layer:

    kv_cache: [2, num_blocks, block_size, num_kv_heads, head_dim]   (0 = K, 1 = V)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def store_kv_ref(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write new K/V ([num_tokens, num_kv_heads, head_dim]) into their slots, in place."""
    num_kv_heads, head_dim = key.shape[1], key.shape[2]
    k_flat = kv_cache[0].view(-1, num_kv_heads, head_dim)
    v_flat = kv_cache[1].view(-1, num_kv_heads, head_dim)
    k_flat.index_copy_(0, slot_mapping, key.to(kv_cache.dtype))
    v_flat.index_copy_(0, slot_mapping, value.to(kv_cache.dtype))


def paged_decode_attention_ref(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query token per sequence.

    query [num_seqs, num_heads, head_dim]; block_tables [num_seqs, max_blocks];
    mask [num_seqs, 1, 1, max_blocks * block_size] -> [num_seqs, num_heads, head_dim].
    GQA: the query heads sharing a KV head are laid out as that head's "query rows", so each
    K/V tile is read once for its whole group.
    """
    num_seqs, num_heads, head_dim = query.shape
    num_kv_heads = kv_cache.shape[3]
    group = num_heads // num_kv_heads
    block_size = kv_cache.shape[2]
    flat = block_tables.reshape(-1)
    kv_len = block_tables.shape[1] * block_size

    def gather(cache: torch.Tensor) -> torch.Tensor:
        # [num_seqs * max_blocks, block_size, kv_heads, D] -> [num_seqs, kv_heads, L, D]
        x = cache.index_select(0, flat).view(num_seqs, kv_len, num_kv_heads, head_dim)
        return x.transpose(1, 2).to(query.dtype).contiguous()

    q = query.view(num_seqs, num_kv_heads, group, head_dim)
    out = F.scaled_dot_product_attention(
        q, gather(kv_cache[0]), gather(kv_cache[1]), attn_mask=mask, scale=scale
    )
    return out.reshape(num_seqs, num_heads, head_dim)


def prefill_attention_ref(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One sequence's new tokens against its keys (cached prefix + new).

    query [q_len, num_heads, D]; key/value [kv_len, num_kv_heads, D]; mask [q_len, kv_len].
    """
    num_heads, num_kv_heads = query.shape[1], key.shape[1]
    q = query.transpose(0, 1)  # [num_heads, q_len, D]
    k = key.transpose(0, 1).to(q.dtype)
    v = value.transpose(0, 1).to(q.dtype)
    if num_kv_heads != num_heads:
        k = k.repeat_interleave(num_heads // num_kv_heads, dim=0)
        v = v.repeat_interleave(num_heads // num_kv_heads, dim=0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(0, 1)


def gather_seq_kv(
    kv_cache: torch.Tensor, block_table: torch.Tensor, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``seq_len`` K and V rows of one sequence: each [seq_len, num_kv_heads, D]."""
    k = kv_cache[0].index_select(0, block_table).flatten(0, 1)[:seq_len]
    v = kv_cache[1].index_select(0, block_table).flatten(0, 1)[:seq_len]
    return k, v
