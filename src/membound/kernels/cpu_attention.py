"""Attention over the paged KV cache, written for CPUs in plain torch.

Same contracts as ``paged_attention.paged_decode_attention`` and
``prefill_attention.prefill_attention`` / ``varlen_attention`` (see those modules); the
references there stay the simple oracles, these are the CPU data plane.

What makes a CPU slow here is memory, not arithmetic. The reference decode gathers every
sequence's K/V padded to the longest sequence of the batch: tens of MB per layer, which the
allocator maps fresh (page faults on every touch) and which falls out of the caches before
attention reads it back. This version sorts the decodes by length and cuts them into
buckets of similar length, each gathered separately and kept small:

    lengths sorted:  [ 17 19 20 | 130 141 150 | 600 610 ... ]     one gather + one SDPA each
    a bucket grows while its padding stays under ``MAX_PADDING`` of its tokens and its
    gathered K stays under ``MAX_BUCKET_BYTES``

With a sliding window only the blocks that hold the window are gathered. GQA never repeats
K/V: a KV head's query heads are that head's query rows.

Prefill in bf16/fp16 materialises the scores in float32, a tile of query rows at a time
(``_attend_materialised``): torch's SDPA CPU kernel reaches ~10-20 GFLOP/s there, two
GEMMs per tile 30-70 (benchmarks/kernels/bench_cpu_prefill_attention.py). float32 keeps SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from membound.kernels.paged_attention import gather_blocks, gather_seq_kv
from membound.kernels.prefill_attention import causal_mask

MAX_PADDING = 0.25  # padded slots / stored tokens allowed in one decode bucket
MAX_BUCKET_BYTES = 4 << 20  # gathered K bytes of one decode bucket (V the same again)
# bf16/fp16 prefill (``_attend_materialised``): float32 score bytes of one query tile, and
# the fewest GEMM rows (query rows x group) a tile keeps (a thinner GEMM is slow: see
# benchmarks/results/cpu_prefill_attention.json)
SCORE_TILE_BYTES = 4 << 20
MIN_TILE_GEMM_ROWS = 64


def plan_decode_buckets(
    spans: list[int], bytes_per_token: int, max_padding: float | None = None,
    max_bytes: int | None = None,
) -> list[list[int]]:
    """Group sequences (by index) so that each group's padding to its longest span stays
    under ``max_padding`` and its gathered bytes under ``max_bytes`` (a group always holds
    at least one sequence; None: the module's MAX_PADDING / MAX_BUCKET_BYTES). Spans of 0
    (padding rows) are left out."""
    max_padding = MAX_PADDING if max_padding is None else max_padding
    max_bytes = MAX_BUCKET_BYTES if max_bytes is None else max_bytes
    order = sorted((i for i, n in enumerate(spans) if n > 0), key=spans.__getitem__)
    buckets: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i in order:
        n = spans[i]
        if current:
            padded = (len(current) + 1) * n  # the new sequence is the longest so far
            fits = padded <= (1.0 + max_padding) * (total + n)
            if fits and padded * bytes_per_token <= max_bytes:
                current.append(i)
                total += n
                continue
            buckets.append(current)
        current, total = [i], n
    if current:
        buckets.append(current)
    return buckets


@dataclass(frozen=True)
class DecodeBucket:
    rows: torch.Tensor  # [n] int64: the bucket's sequences (rows of query/out)
    blocks: torch.Tensor  # [n * num_blocks] int64: the blocks to gather, row after row
    mask: torch.Tensor  # [n, 1, 1, num_blocks * block_size] bool, True = attend
    num_blocks: int


@dataclass(frozen=True)
class DecodePlan:
    """Everything about a decode batch that does not depend on the layer: built once per
    step (``plan_decode``) and reused by every layer."""

    buckets: tuple[DecodeBucket, ...]
    padding_rows: torch.Tensor | None  # rows with seq_len 0 (zeros out), None if there are none
    block_size: int
    sliding_window: int | None


def plan_decode(
    block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int,
    sliding_window: int | None, bytes_per_token: int,
) -> DecodePlan:
    """Bucket a decode batch by length and precompute each bucket's block list and mask
    (host-side numpy, one tensor per field and bucket). With a sliding window, blocks wholly
    before the window are left out."""
    tables = block_tables.cpu().numpy()
    lens = seq_lens.cpu().numpy().astype(np.int64)
    # the first key each query sees, rounded down to its block: blocks before are skipped
    if sliding_window is None:
        first = np.zeros_like(lens)
    else:
        first = np.maximum(0, lens - sliding_window) // block_size * block_size
    spans = np.where(lens > 0, lens - first, 0)
    last_col = tables.shape[1] - 1
    buckets = []
    for bucket in plan_decode_buckets(spans.tolist(), bytes_per_token):
        rows = np.asarray(bucket, dtype=np.int64)
        num_blocks = -(-int(spans[rows].max()) // block_size)
        start = first[rows] // block_size
        cols = np.minimum(start[:, None] + np.arange(num_blocks), last_col)  # past: masked
        blocks = tables[rows[:, None], cols].reshape(-1)
        pos = (start * block_size)[:, None] + np.arange(num_blocks * block_size)
        n_keys = lens[rows][:, None]
        mask = pos < n_keys
        if sliding_window is not None:
            mask &= pos >= n_keys - sliding_window
        buckets.append(DecodeBucket(
            _on(rows, block_tables), _on(blocks.astype(np.int64), block_tables),
            _on(mask[:, None, None, :], block_tables), num_blocks,
        ))
    pad = np.flatnonzero(lens <= 0)
    return DecodePlan(
        tuple(buckets), _on(pad, block_tables) if pad.shape[0] else None, block_size,
        sliding_window,
    )


def _on(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(like.device)


def decode_bytes_per_token(kv_cache: torch.Tensor) -> int:
    """Bytes of one token's K in ``kv_cache`` ([2, blocks, block_size, KVH, D])."""
    return kv_cache.shape[3] * kv_cache.shape[4] * kv_cache.element_size()


def paged_decode_attention_cpu(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    plan: DecodePlan | None = None,
) -> torch.Tensor:
    """Decode attention, bucketed by length (``num_splits`` is a GPU knob and is ignored).
    ``plan``: this batch's ``plan_decode`` result, shared by the layers of a step. An FP8
    cache is read back as the query's dtype; K's scale folds into the softmax scale and V's
    into the output."""
    num_seqs, num_heads, head_dim = query.shape
    block_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    group = num_heads // num_kv_heads
    out = torch.empty_like(query) if out is None else out
    if plan is None:
        plan = plan_decode(block_tables, seq_lens, block_size, sliding_window,
                           decode_bytes_per_token(kv_cache))  # fmt: skip
    elif (plan.block_size, plan.sliding_window) != (block_size, sliding_window):
        raise ValueError("this decode plan was built for another block size or sliding window")
    for b in plan.buckets:
        n, kv_len = b.rows.shape[0], b.num_blocks * block_size

        def gather(cache: torch.Tensor, n: int = n, kv_len: int = kv_len,
                   blocks: torch.Tensor = b.blocks) -> torch.Tensor:  # fmt: skip
            x = gather_blocks(cache, blocks).view(n, kv_len, num_kv_heads, head_dim)
            return x.to(query.dtype).transpose(1, 2)  # [n, KVH, kv_len, D]

        q = query.index_select(0, b.rows).view(n, num_kv_heads, group, head_dim)
        o = F.scaled_dot_product_attention(
            q, gather(kv_cache[0]), gather(kv_cache[1]), attn_mask=b.mask, scale=scale * k_scale
        )
        if v_scale != 1.0:
            o = o * v_scale
        out.index_copy_(0, b.rows, o.reshape(n, num_heads, head_dim).to(out.dtype))
    if plan.padding_rows is not None:  # padding rows (seq_len 0) give zeros
        out.index_fill_(0, plan.padding_rows, 0.0)
    return out


def _attend(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
    sliding_window: int | None, v_scale: float = 1.0,
) -> torch.Tensor:
    """One sequence's new tokens (the last q_len of kv_len positions): query [q_len, H, D],
    key/value [kv_len, KVH, D] -> [q_len, H, D]. bf16/fp16: ``_attend_materialised`` (2-7x
    faster than SDPA at every size measured); float32: torch's SDPA (token-identical to
    transformers, which the equivalence tests rely on)."""
    if query.dtype in (torch.bfloat16, torch.float16):
        return _attend_materialised(query, key, value, scale, sliding_window, v_scale)
    return _attend_sdpa(query, key, value, scale, sliding_window, v_scale)


def _attend_sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
    sliding_window: int | None, v_scale: float = 1.0,
) -> torch.Tensor:
    """``_attend`` through SDPA (torch's CPU flash kernel). GQA through enable_gqa (K/V are
    not repeated here); the mask is [q_len, kv_len], shared by the heads."""
    q_len, num_heads, head_dim = query.shape
    kv_len, num_kv_heads = key.shape[0], key.shape[1]
    gqa = num_heads != num_kv_heads
    q = query.transpose(0, 1)  # [H, q_len, D]
    k = key.to(query.dtype).transpose(0, 1)  # [KVH, kv_len, D]
    v = value.to(query.dtype).transpose(0, 1)
    if sliding_window is None and q_len == kv_len:  # no context: plain causal
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        mask = causal_mask(q_len, kv_len, sliding_window, query.device)  # shared by the heads
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    if v_scale != 1.0:  # an FP8 cache's V scale (K's is inside ``scale``)
        o = o * v_scale
    return o.transpose(0, 1)


def query_tile_rows(num_heads: int, group: int, kv_len: int, tile_bytes: int | None = None
                    ) -> int:  # fmt: skip
    """Query rows per tile of ``_attend_materialised``: its float32 scores ([H, rows, kv_len])
    stay under ``tile_bytes`` (None: ``SCORE_TILE_BYTES``) unless that leaves fewer than
    ``MIN_TILE_GEMM_ROWS`` GEMM rows (rows x ``group``)."""
    budget = SCORE_TILE_BYTES if tile_bytes is None else tile_bytes
    return max(budget // (num_heads * kv_len * 4), -(-MIN_TILE_GEMM_ROWS // group))


def _attend_materialised(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
    sliding_window: int | None, v_scale: float = 1.0, tile_bytes: int | None = None,
) -> torch.Tensor:
    """``_attend`` with the scores materialised in float32, a tile of query rows at a time:

        per tile of t query rows (t: the tile's scores stay under ``tile_bytes``)
          keys [lo, hi): only those some row of the tile sees (causal end, window start)
          S = q_tile @ K^T     [KVH, G*t, hi-lo]  (a KV head's G query heads stacked as rows)
          S[masked] = -inf; softmax in place; O = S @ V

    Two large GEMMs per tile instead of SDPA's small flash blocks, and causal tiles skip the
    keys after their last row (about half the work of a long prompt); K/V are upcast once
    and never repeated for GQA. A tile's scores stay under ``tile_bytes`` (None:
    ``SCORE_TILE_BYTES``) unless that leaves fewer than ``MIN_TILE_GEMM_ROWS`` GEMM rows:
    about max(4 MB, 64 x KVH x kv_len x 4 bytes): 16 MB at 8K keys with 8 KV heads."""
    q_len, num_heads, head_dim = query.shape
    kv_len, num_kv_heads = key.shape[0], key.shape[1]
    group, context = num_heads // num_kv_heads, kv_len - q_len
    k = key.to(torch.float32).transpose(0, 1)  # [KVH, kv_len, D]
    v = value.to(torch.float32).transpose(0, 1)
    if v_scale != 1.0:  # an FP8 cache's V scale (K's is inside ``scale``)
        v = v * v_scale
    q = (query.to(torch.float32) * scale).view(q_len, num_kv_heads, group, head_dim)
    out = torch.empty_like(query)
    tile = query_tile_rows(num_heads, group, kv_len, tile_bytes)
    for i0 in range(0, q_len, tile):
        i1 = min(q_len, i0 + tile)
        t = i1 - i0
        hi = context + i1  # the tile's last row sees keys [.., hi)
        lo = 0 if sliding_window is None else max(0, context + i0 - sliding_window + 1)
        qt = q[i0:i1].permute(1, 2, 0, 3).reshape(num_kv_heads, group * t, head_dim)
        s = torch.bmm(qt, k[:, lo:hi].transpose(1, 2))  # [KVH, G*t, hi-lo]
        q_pos = torch.arange(context + i0, hi, device=query.device)[:, None]
        k_pos = torch.arange(lo, hi, device=query.device)[None, :]
        hidden = k_pos > q_pos
        if sliding_window is not None:
            hidden |= q_pos - k_pos >= sliding_window
        s.view(num_kv_heads, group, t, hi - lo).masked_fill_(hidden, float("-inf"))
        torch.ops.aten._softmax.out(s, -1, False, out=s)  # in place
        o = torch.bmm(s, v[:, lo:hi])  # [KVH, G*t, D]
        out[i0:i1] = o.view(num_kv_heads, group, t, head_dim).permute(2, 0, 1, 3).reshape(
            t, num_heads, head_dim)
    return out


def prefill_attention_cpu(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    max_query_len: int | None = None,
    out: torch.Tensor | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Prefill / extend attention over the paged cache, one sequence at a time; with a
    sliding window only the blocks the chunk can see are gathered."""
    out = torch.empty_like(query) if out is None else out
    starts = query_start_loc.tolist()
    block_size = kv_cache.shape[2]
    for i, total in enumerate(seq_lens.tolist()):
        s, e = starts[i], starts[i + 1]
        if e == s:
            continue
        skip = 0  # whole blocks before the first key the chunk's first token sees
        if sliding_window is not None:
            skip = max(0, total - (e - s) - sliding_window + 1) // block_size
        table = block_tables[i, skip:]
        keys, values = gather_seq_kv(kv_cache, table, total - skip * block_size)
        out[s:e] = _attend(query[s:e], keys, values, scale * k_scale, sliding_window, v_scale)
    return out


def varlen_attention_cpu(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    max_query_len: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of each sequence over its own tokens (no KV cache)."""
    out = torch.empty_like(query) if out is None else out
    starts = query_start_loc.tolist()
    for s, e in zip(starts[:-1], starts[1:], strict=True):
        if e > s:
            out[s:e] = _attend(query[s:e], key[s:e], value[s:e], scale, sliding_window)
    return out
