"""The CPU attention kernels (kernels/cpu_attention.py) against the references: decode
bucketed by length (many buckets, padding rows, sliding windows, GQA/MQA/MHA, a KV cache in
another dtype), prefill/extend over cached context, varlen without a cache. The CPU
backend's attention layer on a mixed step: tests/kernels/test_attention_dispatch.py."""

from __future__ import annotations

import random

import pytest
import torch

from membound.kernels import cpu_attention
from membound.kernels.cpu_attention import (
    decode_bytes_per_token,
    paged_decode_attention_cpu,
    plan_decode,
    plan_decode_buckets,
    prefill_attention_cpu,
    varlen_attention_cpu,
)
from membound.kernels.paged_attention import paged_decode_attention_ref
from membound.kernels.prefill_attention import prefill_attention_ref, varlen_attention_ref

HEADS = [(4, 4, 32), (8, 2, 16), (6, 1, 24)]  # (num_heads, num_kv_heads, head_dim)


def paged_inputs(seq_lens: list[int], h: int, kvh: int, d: int, bs: int, seed: int,
                 cache_dtype: torch.dtype = torch.float32) -> dict:  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    width = max(1, max(-(-n // bs) for n in seq_lens))
    num_blocks = len(seq_lens) * width + 3
    tables = torch.randperm(num_blocks, generator=gen)[: len(seq_lens) * width]
    return {
        "kv_cache": torch.randn(2, num_blocks, bs, kvh, d, generator=gen).to(cache_dtype),
        "block_tables": tables.view(len(seq_lens), width),
        "seq_lens": torch.tensor(seq_lens, dtype=torch.int32),
        "scale": d**-0.5,
    }


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("window", [None, 5, 40])
@pytest.mark.parametrize("bs", [4, 16])
def test_decode_matches_reference(heads: tuple[int, int, int], window: int | None,
                                  bs: int) -> None:  # fmt: skip
    h, kvh, d = heads
    rng = random.Random(bs * 7 + (window or 0))
    lens = [rng.randint(1, 90) for _ in range(23)] + [0, 3, 3, 3, 64]  # 0 = a padding row
    rng.shuffle(lens)
    inputs = paged_inputs(lens, h, kvh, d, bs, seed=len(lens) + bs)
    query = torch.randn(len(lens), h, d, generator=torch.Generator().manual_seed(9))
    expected = paged_decode_attention_ref(query, sliding_window=window, **inputs)
    out = torch.full_like(query, float("nan"))
    got = paged_decode_attention_cpu(query, sliding_window=window, out=out, **inputs)
    assert got is out
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)
    assert (got[torch.tensor(lens) == 0] == 0).all()
    # the per-step plan, built once and handed to every layer, gives the same result
    plan = plan_decode(inputs["block_tables"], inputs["seq_lens"], bs, window,
                       decode_bytes_per_token(inputs["kv_cache"]))  # fmt: skip
    again = paged_decode_attention_cpu(query, sliding_window=window, plan=plan, **inputs)
    torch.testing.assert_close(again, expected, atol=2e-5, rtol=2e-5)
    with pytest.raises(ValueError, match="another block size or sliding window"):
        paged_decode_attention_cpu(query, sliding_window=7, plan=plan, **inputs)


def test_decode_with_one_sequence_per_bucket_and_a_half_precision_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tiny buckets (each sequence alone) and an fp16 cache read by an fp32 query."""
    lens = [9, 1, 33, 17, 16, 2]
    inputs = paged_inputs(lens, 8, 2, 16, 4, seed=3, cache_dtype=torch.float16)
    plan_args = (inputs["block_tables"], inputs["seq_lens"], 4, None, 64)
    assert len(plan_decode(*plan_args).buckets) < len(lens)  # 16 and 17 share one by default
    monkeypatch.setattr(cpu_attention, "MAX_BUCKET_BYTES", 1)
    plan = plan_decode(*plan_args)
    assert sorted(b.rows.tolist() for b in plan.buckets) == [[i] for i in range(len(lens))]
    query = torch.randn(len(lens), 8, 16, generator=torch.Generator().manual_seed(4))
    expected = paged_decode_attention_ref(query, **inputs)
    got = paged_decode_attention_cpu(query, **inputs)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)


def test_bucket_plan_bounds_padding_and_size() -> None:
    rng = random.Random(0)
    spans = [rng.randint(0, 800) for _ in range(200)]
    buckets = plan_decode_buckets(spans, bytes_per_token=64, max_padding=0.25,
                                  max_bytes=1 << 20)  # fmt: skip
    flat = [i for b in buckets for i in b]
    assert sorted(flat) == [i for i, n in enumerate(spans) if n > 0]  # each once, no padding rows
    for b in buckets:
        longest, total = max(spans[i] for i in b), sum(spans[i] for i in b)
        if len(b) > 1:
            assert len(b) * longest <= 1.25 * total
            assert len(b) * longest * 64 <= 1 << 20
    assert len(buckets) < len(flat) / 2  # similar lengths do share a gather
    assert plan_decode_buckets([0, 0], 64) == []
    assert plan_decode_buckets([5000], 1 << 20, max_bytes=1) == [[0]]  # always >= 1 sequence


# (new tokens, cached context) per sequence: a fresh prompt, chunks after cached context,
# a single-token chunk, an empty sequence
SEQS = [(7, 0), (5, 13), (40, 30), (1, 6), (0, 4), (33, 0)]


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("window", [None, 9, 24])
def test_prefill_matches_reference(heads: tuple[int, int, int], window: int | None) -> None:
    h, kvh, d = heads
    bs = 8
    inputs = paged_inputs([n + c for n, c in SEQS], h, kvh, d, bs, seed=5)
    q_lens = [n for n, _ in SEQS]
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    query = torch.randn(sum(q_lens), h, d, generator=torch.Generator().manual_seed(6))
    args = (inputs["kv_cache"], inputs["block_tables"], qsl, inputs["seq_lens"], inputs["scale"],
            window)  # fmt: skip
    expected = prefill_attention_ref(query, *args)
    got = prefill_attention_cpu(query, *args, out=torch.full_like(query, float("nan")))
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("window", [None, 6])
def test_varlen_matches_reference(heads: tuple[int, int, int], window: int | None) -> None:
    h, kvh, d = heads
    gen = torch.Generator().manual_seed(7)
    q_lens = [5, 0, 19, 1, 12]
    t = sum(q_lens)
    q, k, v = (torch.randn(t, n, d, generator=gen) for n in (h, kvh, kvh))
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    expected = varlen_attention_ref(q, k, v, qsl, d**-0.5, window)
    got = varlen_attention_cpu(q, k, v, qsl, d**-0.5, window)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)


# bf16/fp16 prefill: materialised float32 scores, query-tiled (cpu_attention._attend_materialised)
HALF = [torch.bfloat16, torch.float16]
HALF_TOL = {"atol": 1e-2, "rtol": 1e-2}  # the output's rounding to bf16 (fp16: 8x finer)


def small_tiles(monkeypatch: pytest.MonkeyPatch, rows: int) -> None:
    """Tiles of ``rows`` query rows at most (the longest sequence spans several)."""
    monkeypatch.setattr(cpu_attention, "MIN_TILE_GEMM_ROWS", 1)
    monkeypatch.setattr(cpu_attention, "SCORE_TILE_BYTES", 1)
    assert cpu_attention.query_tile_rows(8, 4, 70) == 1
    monkeypatch.setattr(cpu_attention, "MIN_TILE_GEMM_ROWS", rows)  # rows x group rows


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("window", [None, 9, 24])
@pytest.mark.parametrize("tile_rows", [None, 3])  # None: the shipped tiles (one per sequence)
def test_half_prefill_matches_reference(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, heads: tuple[int, int, int],
    window: int | None, tile_rows: int | None,
) -> None:
    """Fresh prompts, chunks over cached context, a single-token chunk, GQA/MQA/MHA, sliding
    windows, and tiles of 3 query rows x group (crossing every sequence's length)."""
    h, kvh, d = heads
    if tile_rows is not None:
        small_tiles(monkeypatch, tile_rows * (h // kvh))
    inputs = paged_inputs([n + c for n, c in SEQS], h, kvh, d, 8, seed=11, cache_dtype=dtype)
    q_lens = [n for n, _ in SEQS]
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    query = torch.randn(sum(q_lens), h, d, generator=torch.Generator().manual_seed(12)).to(dtype)
    args = (inputs["block_tables"], qsl, inputs["seq_lens"], inputs["scale"], window)
    # the reference in float32 over the same (rounded) values
    expected = prefill_attention_ref(query.float(), inputs["kv_cache"].float(), *args)
    got = prefill_attention_cpu(query, inputs["kv_cache"], *args,
                                out=torch.full_like(query, float("nan")))  # fmt: skip
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, **HALF_TOL)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("window", [None, 6])
def test_half_varlen_matches_reference(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype,
                                       window: int | None) -> None:  # fmt: skip
    small_tiles(monkeypatch, 4)
    h, kvh, d = 8, 2, 16
    gen = torch.Generator().manual_seed(13)
    q_lens = [5, 0, 19, 1, 12]
    t = sum(q_lens)
    q, k, v = (torch.randn(t, n, d, generator=gen).to(dtype) for n in (h, kvh, kvh))
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    expected = varlen_attention_ref(q.float(), k.float(), v.float(), qsl, d**-0.5, window)
    got = varlen_attention_cpu(q, k, v, qsl, d**-0.5, window)
    torch.testing.assert_close(got.float(), expected, **HALF_TOL)


def test_half_prefill_applies_the_fp8_scales(monkeypatch: pytest.MonkeyPatch) -> None:
    """An FP8 cache: K's scale folds into the softmax scale, V's into the output."""
    small_tiles(monkeypatch, 8)
    seqs = [(30, 10), (12, 0)]
    inputs = paged_inputs([n + c for n, c in seqs], 8, 2, 16, 4, seed=14,
                          cache_dtype=torch.float8_e4m3fn)  # fmt: skip
    qsl = torch.tensor([0, 30, 42], dtype=torch.int32)
    query = torch.randn(42, 8, 16, generator=torch.Generator().manual_seed(15)).bfloat16()
    args = (inputs["kv_cache"], inputs["block_tables"], qsl, inputs["seq_lens"], inputs["scale"])
    scales = {"k_scale": 0.5, "v_scale": 3.0}
    expected = prefill_attention_ref(query.float(), *args, **scales)
    got = prefill_attention_cpu(query, *args, **scales)
    torch.testing.assert_close(got.float(), expected, atol=3e-2, rtol=1e-2)  # |out| up to ~9
    assert not torch.allclose(got.float(), prefill_attention_ref(query.float(), *args),
                              atol=0.1)  # fmt: skip


def test_float32_prefill_stays_on_sdpa() -> None:
    """float32 is bit-equal to SDPA (token-identical to transformers); half precision is not
    routed there."""
    gen = torch.Generator().manual_seed(16)
    q, k, v = (torch.randn(40, n, 16, generator=gen) for n in (6, 2, 2))
    for window, ctx in [(None, 0), (None, 10), (7, 10)]:
        args = (q[ctx:], k, v, 0.25, window)
        assert torch.equal(cpu_attention._attend(*args), cpu_attention._attend_sdpa(*args))
    half = (q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.25, None)
    assert torch.equal(cpu_attention._attend(*half), cpu_attention._attend_materialised(*half))


def test_query_tiles_bound_the_score_bytes() -> None:
    """Each tile's float32 scores stay under the budget, or at MIN_TILE_GEMM_ROWS GEMM rows
    where the budget allows fewer: an 8K-token prompt allocates MBs, not GBs."""
    budget, min_rows = cpu_attention.SCORE_TILE_BYTES, cpu_attention.MIN_TILE_GEMM_ROWS
    rows = cpu_attention.query_tile_rows(9, 3, 2048)  # SmolLM2 heads, 2K keys: the budget
    assert rows * 9 * 2048 * 4 <= budget < (rows + 1) * 9 * 2048 * 4 and rows * 3 >= min_rows
    for h, g in [(9, 3), (32, 4), (32, 1)]:  # 8K keys: the fewest GEMM rows
        rows = cpu_attention.query_tile_rows(h, g, 8192)
        assert rows == -(-min_rows // g) and rows * h * 8192 * 4 <= 64 << 20
    assert cpu_attention.query_tile_rows(9, 3, 32) >= 2048  # short prompts: one tile
