"""Paged decode attention: one query token per sequence, K/V read through block tables.

    query:        [num_seqs, num_heads, head_dim]
    kv_cache:     [2, num_blocks, block_size, num_kv_heads, head_dim]   (0 = K, 1 = V)
    block_tables: [num_seqs, max_blocks] int (rows padded with any valid block id)
    seq_lens:     [num_seqs] int, the keys each query sees (context + itself); 0 = padding
    out:          [num_seqs, num_heads, head_dim]
    k_scale, v_scale: an FP8 cache (float8_e4m3fn) holds K / k_scale and V / v_scale
                  (kernels/kv_quant.py); K's scale folds into the softmax scale, V's into the
                  accumulator. 1.0 for a cache in the query's dtype.

The kernel is GQA-aware: one program owns a (sequence, KV head) pair and all ``group`` query
heads sharing that KV head, so each K/V tile is read from memory once for the whole group.
The tile is ``BLOCK_N`` tokens wide whatever the page size (each token's block is looked up),
so any block size works; head_dim need not be a power of two (masked lanes).

Flash-decoding: with few (sequence, KV head) pairs and long sequences, each sequence's keys
are split into ``num_splits`` ranges handled by separate programs, which write a partial
(max, sum, accumulator) each; a second kernel merges them:

    keys of seq i:  | split 0 | split 1 | ... | split S-1 |     each a multiple of BLOCK_N
    out[i, h] = sum_s exp(m_s - M) * acc_s / sum_s exp(m_s - M) * l_s,   M = max_s m_s

The split count is chosen per step (it depends on the batch and the context), so it is a
runtime argument of both kernels, never specialised: a new value launches the same compiled
kernels instead of compiling new ones during timed or served steps. Only "split or not" is a
compile-time choice (two variants of the decode kernel, one merge kernel).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from membound.kernels.kv_quant import FP8_KV_DTYPE, check_kv_scales, dequantize_kv_ref, is_fp8
from membound.kernels.triton_utils import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    cdiv,
    check,
    check_tensor,
    dot_precision,
    launch,
    next_pow2,
    num_sms,
    tl,
    triton,
)

LOG2E = 1.4426950408889634
MAX_SPLITS = 64
MIN_TOKENS_PER_SPLIT = 256


@triton.jit(do_not_specialize=["num_splits"])
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, lens_ptr, out_ptr, part_acc_ptr, part_ml_ptr,
    qk_scale, v_scale, window, num_splits,
    stride_qs, stride_qh, stride_os, stride_oh,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt,
    GROUP: tl.constexpr, G_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, SPLIT: tl.constexpr,
    USE_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr, KV_FP8: tl.constexpr,
):
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(lens_ptr + seq)
    lo = seq_len * 0
    if USE_WINDOW:
        lo = tl.maximum(seq_len - window, 0)
    per_split = tl.cdiv(tl.cdiv(seq_len - lo, num_splits), BLOCK_N) * BLOCK_N
    start = lo + split * per_split
    end = tl.minimum(start + per_split, seq_len)

    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D_PAD)
    g_ok = g < GROUP
    d_ok = d < HEAD_DIM
    heads = kvh * GROUP + g
    q_off = seq.to(tl.int64) * stride_qs + heads[:, None] * stride_qh + d[None, :]
    q = tl.load(q_ptr + q_off, mask=g_ok[:, None] & d_ok[None, :], other=0.0)  # [G_PAD, D_PAD]

    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D_PAD], tl.float32)
    table = bt_ptr + seq.to(tl.int64) * stride_bt
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        ok = pos < end
        blk = tl.load(table + pos // PAGE_SIZE, mask=ok, other=0).to(tl.int64)
        row = pos % PAGE_SIZE
        kv_mask = ok[:, None] & d_ok[None, :]
        k_off = blk * stride_kb + row * stride_kt + kvh * stride_kh
        k = tl.load(k_ptr + k_off[:, None] + d[None, :], mask=kv_mask, other=0.0)  # [BLOCK_N, D]
        if KV_FP8:
            k = k.to(q.dtype)  # k_scale is inside qk_scale
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [G_PAD, BLOCK_N]
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_off = blk * stride_vb + row * stride_vt + kvh * stride_vh
        v = tl.load(v_ptr + v_off[:, None] + d[None, :], mask=kv_mask, other=0.0)
        if KV_FP8:
            v = v.to(q.dtype)
        pv = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)  # [G_PAD, D_PAD]
        if KV_FP8:
            pv = pv * v_scale
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    if not SPLIT:
        o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_off = seq.to(tl.int64) * stride_os + heads[:, None] * stride_oh + d[None, :]
        tl.store(out_ptr + o_off, o.to(out_ptr.dtype.element_ty),
                 mask=g_ok[:, None] & d_ok[None, :])
    else:
        num_heads = tl.num_programs(1) * GROUP
        part = (seq.to(tl.int64) * num_heads + heads) * num_splits + split  # [G_PAD]
        tl.store(part_acc_ptr + part[:, None] * D_PAD + d[None, :], acc, mask=g_ok[:, None])
        tl.store(part_ml_ptr + part * 2, m_i, mask=g_ok)
        tl.store(part_ml_ptr + part * 2 + 1, l_i, mask=g_ok)


@triton.jit(do_not_specialize=["num_splits"])
def _merge_splits_kernel(
    part_acc_ptr, part_ml_ptr, out_ptr, stride_os, stride_oh, num_splits,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, S_PAD: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    num_heads = tl.num_programs(1)
    s = tl.arange(0, S_PAD)
    d = tl.arange(0, D_PAD)
    s_ok = s < num_splits
    part = (seq.to(tl.int64) * num_heads + head) * num_splits + s  # [S_PAD]
    m = tl.load(part_ml_ptr + part * 2, mask=s_ok, other=float("-inf"))
    l_s = tl.load(part_ml_ptr + part * 2 + 1, mask=s_ok, other=0.0)
    m_max = tl.max(m, 0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.exp2(m - m_max)  # empty splits (m = -inf) weigh 0
    l_tot = tl.sum(w * l_s, 0)
    acc = tl.load(part_acc_ptr + part[:, None] * D_PAD + d[None, :], mask=s_ok[:, None], other=0.0)
    o = tl.sum(acc * w[:, None], 0) / tl.where(l_tot == 0.0, 1.0, l_tot)  # [D_PAD]
    o_off = seq.to(tl.int64) * stride_os + head * stride_oh + d
    tl.store(out_ptr + o_off, o.to(out_ptr.dtype.element_ty), mask=d < HEAD_DIM)


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_kv_len: int, sm_count: int) -> int:
    """Split K/V only when (sequence, KV head) pairs leave the GPU idle and sequences are
    long: aim at two programs per SM, with at least MIN_TOKENS_PER_SPLIT keys per split."""
    pairs = num_seqs * num_kv_heads
    target = 2 * sm_count
    if pairs == 0 or pairs >= target:
        return 1
    by_len = max(1, max_kv_len // MIN_TOKENS_PER_SPLIT)
    return max(1, min(cdiv(target, pairs), by_len, MAX_SPLITS))


def _check_decode(
    query: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, out: torch.Tensor | None, k_scale: float, v_scale: float,
) -> None:
    dev = query.device
    check_tensor("query", query, 3, FLOAT_DTYPES, last_dim_contiguous=True)
    check_tensor("kv_cache", kv_cache, 5, (query.dtype, FP8_KV_DTYPE), dev,
                 last_dim_contiguous=True)
    check_tensor("block_tables", block_tables, 2, INDEX_DTYPES, dev, last_dim_contiguous=True)
    check_tensor("seq_lens", seq_lens, 1, INDEX_DTYPES, dev)
    num_seqs, num_heads, head_dim = query.shape
    check(kv_cache.shape[0] == 2, f"kv_cache dim 0 must be 2 (K, V), got {kv_cache.shape[0]}")
    check(kv_cache.shape[4] == head_dim,
          f"kv_cache head_dim {kv_cache.shape[4]} != query head_dim {head_dim}")
    check(num_heads % kv_cache.shape[3] == 0,
          f"num_heads {num_heads} is not a multiple of num_kv_heads {kv_cache.shape[3]}")
    check(block_tables.shape[0] == num_seqs and seq_lens.shape[0] == num_seqs,
          f"block_tables {tuple(block_tables.shape)} / seq_lens {tuple(seq_lens.shape)} do not "
          f"match {num_seqs} sequences")
    check(head_dim >= 16, f"head_dim {head_dim} is below the kernel minimum of 16")
    check_kv_scales(kv_cache.dtype, k_scale, v_scale)
    if out is not None:
        check_tensor("out", out, 3, (query.dtype,), dev, last_dim_contiguous=True)
        check(out.shape == query.shape, f"out {tuple(out.shape)} != query {tuple(query.shape)}")


def paged_decode_attention(
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
) -> torch.Tensor:
    """Decode attention through block tables (Triton). ``num_splits`` None picks the
    flash-decoding split from the table width, the batch and the device; CUDA graphs fix it."""
    _check_decode(query, kv_cache, block_tables, seq_lens, out, k_scale, v_scale)
    num_seqs, num_heads, head_dim = query.shape
    page_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if num_seqs == 0:
        return out
    if num_splits is None:
        max_kv_len = block_tables.shape[1] * page_size
        num_splits = choose_num_splits(num_seqs, num_kv_heads, max_kv_len, num_sms(query.device))
    check(1 <= num_splits <= MAX_SPLITS, f"num_splits must be in [1, {MAX_SPLITS}], got {num_splits}")
    group = num_heads // num_kv_heads
    d_pad = next_pow2(head_dim)
    block_n = 16 if query.device.type == "cpu" else (64 if d_pad <= 128 else 32)
    part_acc = part_ml = out  # placeholders, unused with one split
    if num_splits > 1:
        part_acc = torch.empty((num_seqs, num_heads, num_splits, d_pad), dtype=torch.float32,
                               device=query.device)  # fmt: skip
        part_ml = torch.empty((num_seqs, num_heads, num_splits, 2), dtype=torch.float32,
                              device=query.device)  # fmt: skip
    k_cache, v_cache = kv_cache[0], kv_cache[1]  # [num_blocks, block_size, kv_heads, D]
    launch(
        _decode_kernel, (num_seqs, num_kv_heads, num_splits), query.device,
        query, k_cache, v_cache, block_tables, seq_lens, out, part_acc, part_ml,
        scale * k_scale * LOG2E, float(v_scale), sliding_window or 0, num_splits,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        GROUP=group, G_PAD=max(16, next_pow2(group)), HEAD_DIM=head_dim, D_PAD=d_pad,
        BLOCK_N=block_n, PAGE_SIZE=page_size, SPLIT=num_splits > 1,
        USE_WINDOW=sliding_window is not None, DOT_PRECISION=dot_precision(query.dtype),
        KV_FP8=is_fp8(kv_cache.dtype), num_warps=8 if d_pad >= 256 else 4,
    )
    if num_splits > 1:
        launch(
            _merge_splits_kernel, (num_seqs, num_heads), query.device,
            part_acc, part_ml, out, out.stride(0), out.stride(1), num_splits,
            HEAD_DIM=head_dim, D_PAD=d_pad, S_PAD=MAX_SPLITS,
        )
    return out


def paged_decode_attention_ref(
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
) -> torch.Tensor:
    """Plain torch, the same contract (``num_splits`` is a kernel knob and is ignored).

    GQA: the query heads sharing a KV head are laid out as that head's "query rows", so each
    gathered K/V is used by its whole group without being repeated.
    """
    num_seqs, num_heads, head_dim = query.shape
    block_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    group = num_heads // num_kv_heads
    flat = block_tables.reshape(-1)
    kv_len = block_tables.shape[1] * block_size

    def gather(cache: torch.Tensor, scale: float) -> torch.Tensor:
        # [num_seqs * max_blocks, block_size, kv_heads, D] -> [num_seqs, kv_heads, L, D]
        x = gather_blocks(cache, flat).view(num_seqs, kv_len, num_kv_heads, head_dim)
        return dequantize_kv_ref(x.transpose(1, 2), scale, query.dtype).contiguous()

    k_pos = torch.arange(kv_len, device=query.device)[None, :]  # [1, L]
    lens = seq_lens.to(torch.int64)[:, None]  # [num_seqs, 1]
    mask = k_pos < lens  # [num_seqs, L]
    if sliding_window is not None:
        mask &= k_pos >= lens - sliding_window
    q = query.reshape(num_seqs, num_kv_heads, group, head_dim)  # [S, KVH, group, D]
    o = F.scaled_dot_product_attention(
        q, gather(kv_cache[0], k_scale), gather(kv_cache[1], v_scale),
        attn_mask=mask[:, None, None, :], scale=scale,
    )
    o = o.reshape(num_seqs, num_heads, head_dim)
    if num_seqs and not bool(mask.any(dim=1).all()):  # padding rows (seq_len 0) give zeros
        o = o.masked_fill(~mask.any(dim=1)[:, None, None], 0.0)
    if out is None:
        return o
    out.copy_(o)
    return out


def gather_blocks(cache: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``cache[blocks]`` for any cache dtype (index_select has no FP8 kernel: bytes are
    gathered and viewed back)."""
    if is_fp8(cache.dtype):
        return cache.view(torch.uint8).index_select(0, blocks).view(cache.dtype)
    return cache.index_select(0, blocks)


def gather_seq_kv(
    kv_cache: torch.Tensor, block_table: torch.Tensor, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``seq_len`` K and V rows of one sequence: each [seq_len, num_kv_heads, D],
    in the cache's dtype (dequantize an FP8 cache with kv_quant.dequantize_kv_ref)."""
    blocks = block_table[: math.ceil(seq_len / kv_cache.shape[2])]
    k = gather_blocks(kv_cache[0], blocks).flatten(0, 1)[:seq_len]
    v = gather_blocks(kv_cache[1], blocks).flatten(0, 1)[:seq_len]
    return k, v
