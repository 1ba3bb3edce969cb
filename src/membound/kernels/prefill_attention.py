"""Prefill / extend attention: variable-length causal attention of each sequence's new tokens
over its cached prefix and themselves (chunked prefill, prefix-cache hits), and the
cache-less variant (scoring, memory profiling).

    query:           [num_tokens, num_heads, head_dim]   the sequences' new tokens, concatenated
    kv_cache:        [2, num_blocks, block_size, num_kv_heads, head_dim]  (new K/V already stored)
    block_tables:    [num_seqs, max_blocks] int
    query_start_loc: [num_seqs + 1] int, sequence i's tokens are query[qsl[i]:qsl[i + 1]]
    seq_lens:        [num_seqs] int, context + new tokens
    k_scale, v_scale: an FP8 cache holds K / k_scale and V / v_scale (kernels/kv_quant.py)

    seq i keys:  | cached context (seq_len - q_len) | new tokens (q_len) |
    new token t (position ctx + t) sees keys k_pos <= ctx + t, and with a sliding window W
    only ctx + t - k_pos < W.

One program owns BLOCK_M new tokens of one sequence and one KV head, with all ``group`` query
heads sharing it as rows (row r = token r // G_PAD, head r % G_PAD): each K/V tile is read
once for the group. Online softmax in fp32; KV tiles past the causal limit (or before the
window) are never loaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from membound.kernels.kv_quant import FP8_KV_DTYPE, check_kv_scales, dequantize_kv_ref, is_fp8
from membound.kernels.paged_attention import LOG2E, gather_seq_kv
from membound.kernels.triton_utils import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    cdiv,
    check,
    check_tensor,
    dot_precision,
    launch,
    next_pow2,
    tl,
    triton,
)


@triton.jit
def _row_offsets(table, pos, ok, q_start, kvh, stride_b, stride_t, stride_h,
                 PAGE_SIZE: tl.constexpr, PAGED: tl.constexpr):
    """Element offset of key position ``pos`` (KV head ``kvh``): through the block table,
    or, without a cache, the sequence's own rows starting at token ``q_start``."""
    if PAGED:
        blk = tl.load(table + pos // PAGE_SIZE, mask=ok, other=0).to(tl.int64)
        return blk * stride_b + (pos % PAGE_SIZE) * stride_t + kvh * stride_h
    else:
        return (q_start + pos) * stride_t + kvh * stride_h


@triton.jit
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, bt_ptr, qsl_ptr, lens_ptr,
    qk_scale, v_scale, window,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt,
    GROUP: tl.constexpr, G_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr,
    PAGED: tl.constexpr, USE_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr,
    KV_FP8: tl.constexpr,
):
    seq = tl.program_id(0)
    qblk = tl.program_id(1)
    kvh = tl.program_id(2)
    q_start = tl.load(qsl_ptr + seq).to(tl.int64)
    q_len = (tl.load(qsl_ptr + seq + 1) - q_start).to(tl.int32)
    if qblk * BLOCK_M >= q_len:
        return
    seq_len = tl.load(lens_ptr + seq).to(tl.int32)
    ctx = seq_len - q_len

    r = tl.arange(0, BLOCK_M * G_PAD)
    t = qblk * BLOCK_M + r // G_PAD  # new-token index of each row
    g = r % G_PAD
    row_ok = (t < q_len) & (g < GROUP)
    d = tl.arange(0, D_PAD)
    d_ok = d < HEAD_DIM
    heads = kvh * GROUP + g
    q_off = (q_start + t) * stride_qt + heads * stride_qh
    q = tl.load(q_ptr + q_off[:, None] + d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                other=0.0)  # [BLOCK_M * G_PAD, D_PAD]
    q_pos = ctx + t

    m_i = tl.full([BLOCK_M * G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M * G_PAD], tl.float32)
    acc = tl.zeros([BLOCK_M * G_PAD, D_PAD], tl.float32)
    hi = tl.minimum(seq_len, ctx + (qblk + 1) * BLOCK_M)  # causal: nothing past the last row
    lo = hi * 0
    if USE_WINDOW:
        lo = tl.maximum(ctx + qblk * BLOCK_M - window + 1, 0)
    for n0 in range(lo, hi, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        ok = pos < hi
        k_off = _row_offsets(bt_ptr + seq * stride_bt, pos, ok, q_start, kvh,
                             stride_kb, stride_kt, stride_kh, PAGE_SIZE, PAGED)  # [BLOCK_N]
        v_off = _row_offsets(bt_ptr + seq * stride_bt, pos, ok, q_start, kvh,
                             stride_vb, stride_vt, stride_vh, PAGE_SIZE, PAGED)
        kv_mask = ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + k_off[:, None] + d[None, :], mask=kv_mask, other=0.0)  # [BLOCK_N, D]
        if KV_FP8:
            k = k.to(q.dtype)  # k_scale is inside qk_scale
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [rows, BLOCK_N]
        keep = ok[None, :] & (pos[None, :] <= q_pos[:, None])
        if USE_WINDOW:
            keep = keep & (q_pos[:, None] - pos[None, :] < window)
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + v_off[:, None] + d[None, :], mask=kv_mask, other=0.0)
        if KV_FP8:
            v = v.to(q.dtype)
        pv = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        if KV_FP8:
            pv = pv * v_scale
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_off = (q_start + t) * stride_ot + heads * stride_oh
    tl.store(out_ptr + o_off[:, None] + d[None, :], o.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])


def _tiles(device: torch.device, group: int, d_pad: int) -> tuple[int, int, int]:
    """(G_PAD, BLOCK_M, BLOCK_N): about 128 query rows per program on a GPU (64 for
    head_dim 256), small tiles in the interpreter so tiny tests still cross tile edges."""
    g_pad = next_pow2(group)
    rows, block_n = (32, 16) if device.type == "cpu" else ((128, 64) if d_pad <= 128 else (64, 32))
    block_m = max(1, rows // g_pad)
    if block_m * g_pad < 16:  # tl.dot needs at least 16 rows
        block_m = 16 // g_pad
    return g_pad, block_m, block_n


def _check_common(query: torch.Tensor, qsl: torch.Tensor, out: torch.Tensor | None) -> None:
    check_tensor("query", query, 3, FLOAT_DTYPES, last_dim_contiguous=True)
    check_tensor("query_start_loc", qsl, 1, INDEX_DTYPES, query.device)
    check(qsl.shape[0] >= 1, "query_start_loc needs num_seqs + 1 entries")
    check(query.shape[2] >= 16, f"head_dim {query.shape[2]} is below the kernel minimum of 16")
    if out is not None:
        check_tensor("out", out, 3, (query.dtype,), query.device, last_dim_contiguous=True)
        check(out.shape == query.shape, f"out {tuple(out.shape)} != query {tuple(query.shape)}")


def _max_query_len(qsl: torch.Tensor, max_query_len: int | None) -> int:
    if max_query_len is not None:
        return max_query_len
    return int((qsl[1:] - qsl[:-1]).max()) if qsl.shape[0] > 1 else 0  # syncs; pass it


def _launch(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, block_tables: torch.Tensor,
    qsl: torch.Tensor, seq_lens: torch.Tensor, scale: float, window: int | None,
    max_query_len: int, out: torch.Tensor, page_size: int, paged: bool,
    k_scale: float = 1.0, v_scale: float = 1.0,
) -> None:
    """key/value: the K and V caches [num_blocks, block_size, KVH, D] when ``paged``, else
    the new rows [num_tokens, KVH, D] (strides of a token, of a head = dims -3, -2)."""
    num_seqs = qsl.shape[0] - 1
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = key.shape[-2]
    group = num_heads // num_kv_heads
    d_pad = next_pow2(head_dim)
    g_pad, block_m, block_n = _tiles(query.device, group, d_pad)
    if num_seqs == 0 or max_query_len == 0:
        return
    kb = key.stride(0) if paged else 0
    vb = value.stride(0) if paged else 0
    launch(
        _prefill_kernel, (num_seqs, cdiv(max_query_len, block_m), num_kv_heads), query.device,
        query, key, value, out, block_tables, qsl, seq_lens,
        scale * k_scale * LOG2E, float(v_scale), window or 0,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        kb, key.stride(-3), key.stride(-2), vb, value.stride(-3), value.stride(-2),
        block_tables.stride(0),
        GROUP=group, G_PAD=g_pad, HEAD_DIM=head_dim, D_PAD=d_pad,
        BLOCK_M=block_m, BLOCK_N=block_n, PAGE_SIZE=page_size,
        PAGED=paged, USE_WINDOW=window is not None, DOT_PRECISION=dot_precision(query.dtype),
        KV_FP8=is_fp8(key.dtype), num_warps=8 if block_m * g_pad * d_pad >= 128 * 128 else 4, num_stages=2,
    )


def prefill_attention(
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
    """Causal attention of new tokens over paged K/V (Triton). ``max_query_len`` sizes the
    grid; pass it (the runner knows it) to avoid a device sync."""
    _check_common(query, query_start_loc, out)
    dev = query.device
    check_tensor("kv_cache", kv_cache, 5, (query.dtype, FP8_KV_DTYPE), dev,
                 last_dim_contiguous=True)
    check_kv_scales(kv_cache.dtype, k_scale, v_scale)
    check_tensor("block_tables", block_tables, 2, INDEX_DTYPES, dev, last_dim_contiguous=True)
    check_tensor("seq_lens", seq_lens, 1, INDEX_DTYPES, dev)
    num_seqs = query_start_loc.shape[0] - 1
    check(kv_cache.shape[0] == 2 and kv_cache.shape[4] == query.shape[2],
          f"kv_cache {tuple(kv_cache.shape)} does not hold K/V of head_dim {query.shape[2]}")
    check(query.shape[1] % kv_cache.shape[3] == 0,
          f"num_heads {query.shape[1]} is not a multiple of num_kv_heads {kv_cache.shape[3]}")
    check(block_tables.shape[0] == num_seqs and seq_lens.shape[0] == num_seqs,
          f"block_tables {tuple(block_tables.shape)} / seq_lens {tuple(seq_lens.shape)} do not "
          f"match {num_seqs} sequences")
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=dev)
    _launch(query, kv_cache[0], kv_cache[1], block_tables, query_start_loc, seq_lens, scale,
            sliding_window, _max_query_len(query_start_loc, max_query_len), out,
            kv_cache.shape[2], paged=True, k_scale=k_scale, v_scale=v_scale)  # fmt: skip
    return out


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    max_query_len: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of each sequence's tokens over themselves only (no KV cache), K/V
    [num_tokens, num_kv_heads, head_dim] (Triton)."""
    _check_common(query, query_start_loc, out)
    dev = query.device
    for name, t in (("key", key), ("value", value)):
        check_tensor(name, t, 3, (query.dtype,), dev, last_dim_contiguous=True)
        check(t.shape[0] == query.shape[0] and t.shape[2] == query.shape[2],
              f"{name} {tuple(t.shape)} does not match query {tuple(query.shape)}")
    check(key.shape == value.shape, f"key {tuple(key.shape)} != value {tuple(value.shape)}")
    check(query.shape[1] % key.shape[1] == 0,
          f"num_heads {query.shape[1]} is not a multiple of num_kv_heads {key.shape[1]}")
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=dev)
    seq_lens = query_start_loc[1:] - query_start_loc[:-1]  # [num_seqs], no context
    _launch(query, key, value, query_start_loc, query_start_loc, seq_lens, scale,
            sliding_window, _max_query_len(query_start_loc, max_query_len), out, 1, paged=False)
    return out


# ---- references --------------------------------------------------------------------------


def causal_mask(
    q_len: int, seq_len: int, sliding_window: int | None, device: torch.device
) -> torch.Tensor:
    """[q_len, seq_len] bool, True = attend: the new tokens are the last q_len positions."""
    q_pos = torch.arange(seq_len - q_len, seq_len, device=device)[:, None]
    k_pos = torch.arange(seq_len, device=device)[None, :]
    mask = k_pos <= q_pos
    if sliding_window is not None:
        mask &= q_pos - k_pos < sliding_window
    return mask


def attend_ref(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """One sequence: query [q_len, H, D] against key/value [kv_len, KVH, D], mask [q_len,
    kv_len] -> [q_len, H, D]."""
    num_heads, num_kv_heads = query.shape[1], key.shape[1]
    q = query.transpose(0, 1)  # [num_heads, q_len, D]
    k = key.transpose(0, 1).to(q.dtype)  # [num_kv_heads, kv_len, D]
    v = value.transpose(0, 1).to(q.dtype)
    if num_kv_heads != num_heads:
        k = k.repeat_interleave(num_heads // num_kv_heads, dim=0)
        v = v.repeat_interleave(num_heads // num_kv_heads, dim=0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(0, 1)


def prefill_attention_ref(
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
    """Plain torch, the same contract as ``prefill_attention``: one sequence at a time."""
    out = torch.empty_like(query) if out is None else out
    starts = query_start_loc.tolist()
    for i, total in enumerate(seq_lens.tolist()):
        s, e = starts[i], starts[i + 1]
        if e == s:
            continue
        keys, values = gather_seq_kv(kv_cache, block_tables[i], total)
        keys = dequantize_kv_ref(keys, k_scale, query.dtype)  # [total, KVH, D]
        values = dequantize_kv_ref(values, v_scale, query.dtype)
        mask = causal_mask(e - s, total, sliding_window, query.device)
        out[s:e] = attend_ref(query[s:e], keys, values, mask, scale)
    return out


def varlen_attention_ref(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    max_query_len: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain torch, the same contract as ``varlen_attention``."""
    out = torch.empty_like(query) if out is None else out
    starts = query_start_loc.tolist()
    for s, e in zip(starts[:-1], starts[1:], strict=True):
        if e == s:
            continue
        mask = causal_mask(e - s, e - s, sliding_window, query.device)
        out[s:e] = attend_ref(query[s:e], key[s:e], value[s:e], mask, scale)
    return out
