"""The native CPU kernels on an FP8 (E4M3) KV cache against the torch references
(kernels/kv_quant.py: stored = saturate(x / scale), read = stored * scale).

Stores must equal ``quantize_kv_ref`` byte for byte (the same saturation and rounding);
attention reads the stored values exactly and is compared within bf16 rounding."""

from __future__ import annotations

import pytest
import torch

from membound.kernels import cpu_native
from membound.kernels.contract import CpuOps
from membound.kernels.kv_quant import FP8_KV_DTYPE, quantize_kv_ref
from membound.kernels.paged_attention import paged_decode_attention_ref
from membound.kernels.prefill_attention import prefill_attention_ref


def _fp8_cache(num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
               g: torch.Generator, k_scale: float, v_scale: float) -> torch.Tensor:  # fmt: skip
    """A cache of stored values: random K/V (a wide range of magnitudes) quantized."""
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k = torch.randn(shape, generator=g) * 4
    v = torch.randn(shape, generator=g) * 4
    return torch.stack([quantize_kv_ref(k, k_scale, FP8_KV_DTYPE),
                        quantize_kv_ref(v, v_scale, FP8_KV_DTYPE)])  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("k_scale", "v_scale"), [(1.0, 1.0), (0.37, 3.0)])
def test_store_matches_the_reference_byte_for_byte(native, dtype, k_scale, v_scale) -> None:
    """Magnitudes from 1e-6 (E4M3 subnormals and zero) to 1e3 (saturated at 448), bf16
    inputs (many exact rounding ties) and float32; a slot of -1 writes nothing."""
    g = torch.Generator().manual_seed(3)
    T, kvh, d = 37, 3, 64
    mag = torch.logspace(-6, 3, T).view(T, 1, 1)
    k = (torch.randn(T, kvh, d, generator=g) * mag).to(dtype)
    v = (torch.randn(T, kvh, d, generator=g) * mag).to(dtype)
    cache = torch.zeros(2, 8, 16, kvh, d, dtype=FP8_KV_DTYPE)
    slots = torch.randperm(128, generator=g)[:T]
    slots[5] = -1
    native.store_kv(k, v, cache, slots, k_scale, v_scale)
    live = slots >= 0
    for half, x, s in ((0, k, k_scale), (1, v, v_scale)):
        stored = cache[half].view(-1, kvh, d)[slots[live]].view(torch.uint8)
        assert torch.equal(stored, quantize_kv_ref(x[live], s, FP8_KV_DTYPE).view(torch.uint8))
    written = torch.zeros(128, dtype=torch.bool)
    written[slots[live]] = True
    assert not cache[0].view(-1, kvh * d)[~written].view(torch.uint8).any()


def test_every_e4m3_value_survives_a_store(native) -> None:
    values = torch.arange(256, dtype=torch.uint8).view(FP8_KV_DTYPE).float()
    values = values[~values.isnan()]  # 254 finite values, +-0 included
    rows = torch.cat([values, torch.zeros(2)]).view(-1, 1, 64)
    cache = torch.zeros(2, 1, 4, 1, 64, dtype=FP8_KV_DTYPE)
    native.store_kv(rows, rows, cache, torch.arange(4), 1.0, 1.0)
    assert torch.equal(cache[0].reshape(-1)[: values.numel()].float(), values)


# query heads per KV head and head dims around the E4M3 V kernel's groups of heads (6 of 64
# dims, 12 of 32, 3 of 128: accumulate_v_eo): one group, a group and a remainder
GROUPINGS = [(3, 9, 64), (1, 8, 64), (1, 14, 32), (2, 8, 128)]


@pytest.mark.parametrize("window", [None, 20])
@pytest.mark.parametrize("num_seqs", [3, 12])  # (sequence, KV head) tasks; sequence tasks
@pytest.mark.parametrize(("kvh", "heads", "d"), GROUPINGS)
def test_decode_attention(native, window, num_seqs, kvh, heads, d) -> None:
    g = torch.Generator().manual_seed(num_seqs)
    lens = [1, 0, 90, 17, 33, 48, 5, 200, 16, 64, 31, 129][:num_seqs]
    bs = 16
    max_blocks = max(-(-n // bs) for n in lens) + 1
    num_blocks = len(lens) * max_blocks + 2
    cache = _fp8_cache(num_blocks, bs, kvh, d, g, 0.5, 2.0)
    tables = torch.randperm(num_blocks, generator=g)[: len(lens) * max_blocks].view(len(lens), -1)
    q = torch.randn(len(lens), heads, d, generator=g).bfloat16()
    seq_lens = torch.tensor(lens)
    ref = paged_decode_attention_ref(q.float(), cache, tables, seq_lens, d**-0.5, window,
                                     k_scale=0.5, v_scale=2.0)  # fmt: skip
    out = torch.full_like(q, float("nan"))
    native.decode_attention(q, cache, tables.int().contiguous(), seq_lens.int(), d**-0.5,
                            window or 0, out, 0.5, 2.0)  # fmt: skip
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    assert torch.equal(out[1], torch.zeros_like(out[1]))  # the padding row


def test_prefill_attention(native) -> None:
    if not native.prefill_supported(64):
        pytest.skip("no native bf16 GEMM on this CPU (neither AMX nor AVX512-BF16)")
    g = torch.Generator().manual_seed(7)
    q_lens, lens, bs = [3, 100, 40], [10, 230, 40], 16
    max_blocks = max(-(-n // bs) for n in lens)
    num_blocks = len(lens) * max_blocks + 3
    cache = _fp8_cache(num_blocks, bs, 3, 64, g, 0.25, 1.5)
    tables = torch.randperm(num_blocks, generator=g)[: len(lens) * max_blocks].view(len(lens), -1)
    starts = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()])
    q = torch.randn(int(starts[-1]), 9, 64, generator=g).bfloat16()
    seq_lens = torch.tensor(lens)
    ref = prefill_attention_ref(q.float(), cache, tables, starts, seq_lens, 0.125, None,
                                k_scale=0.25, v_scale=1.5)  # fmt: skip
    out = torch.full_like(q, float("nan"))
    native.prefill_attention(q, cache, tables, starts, seq_lens, 0.125, 0, out, 0.25, 1.5)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_refuses_bad_input(native) -> None:
    g = torch.Generator().manual_seed(0)
    cache = _fp8_cache(4, 16, 3, 64, g, 1.0, 1.0)
    q = torch.randn(2, 9, 64).bfloat16()
    tables, lens = torch.arange(4).view(2, 2).int(), torch.tensor([5, 20]).int()
    with pytest.raises(RuntimeError, match="bf16 queries"):  # fp16 queries on an FP8 cache
        native.decode_attention(q.half(), cache, tables, lens, 0.1, 0, q.half(), 1.0, 1.0)
    with pytest.raises(RuntimeError, match="k_scale"):
        native.decode_attention(q, cache, tables, lens, 0.1, 0, q.clone(), 0.0, 1.0)
    bf16_cache = cache.float().bfloat16()
    with pytest.raises(RuntimeError, match="1.0 unless the cache is FP8"):
        native.decode_attention(q, bf16_cache, tables, lens, 0.1, 0, q.clone(), 2.0, 1.0)
    k = torch.randn(2, 3, 64).bfloat16()
    with pytest.raises(RuntimeError, match="1.0 unless the cache is FP8"):
        native.store_kv(k, k, bf16_cache, torch.tensor([0, 1]), 1.0, 0.5)
    with pytest.raises(RuntimeError, match="FP8 cache"):  # fp16 rows into an FP8 cache
        native.store_kv(k.half(), k.half(), cache, torch.tensor([0, 1]), 1.0, 1.0)


def test_cpu_ops_route_a_bf16_model_fp8_cache_to_native(native) -> None:
    """A bf16 model's store and decode on an FP8 cache go native (the native plan is built
    for them) and agree with the torch path's; float32 keeps the torch path."""
    g = torch.Generator().manual_seed(1)
    ops = CpuOps(native=native)
    cache = torch.zeros(2, 6, 16, 3, 64, dtype=FP8_KV_DTYPE)
    k = torch.randn(40, 3, 64, generator=g).bfloat16()
    ops.store_kv(key=k, value=k, kv_cache=cache, slot_mapping=torch.arange(40), k_scale=0.5,
                 v_scale=0.5)  # fmt: skip
    assert torch.equal(cache[0].view(-1, 3, 64)[:40].view(torch.uint8),
                       quantize_kv_ref(k, 0.5, FP8_KV_DTYPE).view(torch.uint8))  # fmt: skip
    tables, lens = torch.tensor([[0, 1, 2], [3, 4, 5]]).int(), torch.tensor([40, 7]).int()
    plan = ops.plan_decode(block_tables=tables, seq_lens=lens, block_size=16,
                           sliding_window=None, kv_cache=cache)  # fmt: skip
    assert isinstance(plan, cpu_native.NativeDecodePlan)
    q = torch.randn(2, 9, 64, generator=g).bfloat16()
    kw = {"kv_cache": cache, "block_tables": tables, "seq_lens": lens, "scale": 0.125,
          "sliding_window": None, "num_splits": None, "out": None, "k_scale": 0.5,
          "v_scale": 0.5}  # fmt: skip
    out = ops.decode_attention(query=q, plan=plan, **kw)
    ref = paged_decode_attention_ref(q.float(), cache, tables, lens, 0.125, k_scale=0.5,
                                     v_scale=0.5)  # fmt: skip
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    out32 = ops.decode_attention(query=q.float(), plan=plan, **kw)  # the torch path
    torch.testing.assert_close(out32, ref, rtol=1e-4, atol=1e-4)


def _every_code_cache(
    num_blocks: int, bs: int, kvh: int, d: int, g: torch.Generator
) -> torch.Tensor:
    """An FP8 cache whose K and V hold every finite E4M3 code (+-0 and the subnormals
    included), each many times, in a random order."""
    codes = torch.arange(256, dtype=torch.uint8)
    codes = codes[(codes & 0x7F) != 0x7F]  # no NaN
    n = 2 * num_blocks * bs * kvh * d
    picks = codes[torch.randint(0, codes.numel(), (n,), generator=g)]
    picks[: codes.numel()] = codes
    return picks[torch.randperm(n, generator=g)].view(2, num_blocks, bs, kvh, d).view(FP8_KV_DTYPE)


@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_fp8_reads_every_value_exactly(native, head_dim) -> None:
    """Every E4M3 value is a bf16 value, and the kernels convert it exactly (32 or 64 values
    per conversion, by head size): attention over an FP8 cache equals, bit for bit, attention
    over the same values stored as bf16 (scales 1)."""
    g = torch.Generator().manual_seed(head_dim)
    lens, kvh, heads, bs = [7, 70, 16, 45], 2, 6, 16
    max_blocks = max(-(-n // bs) for n in lens)
    num_blocks = len(lens) * max_blocks + 1
    cache = _every_code_cache(num_blocks, bs, kvh, head_dim, g)
    as_bf16 = cache.float().bfloat16()
    tables = (torch.randperm(num_blocks - 1, generator=g)[: len(lens) * max_blocks] + 1).view(
        len(lens), -1
    )
    q = torch.randn(len(lens), heads, head_dim, generator=g).bfloat16()
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    out8, out16 = torch.empty_like(q), torch.empty_like(q)
    native.decode_attention(q, cache, tables.int().contiguous(), seq_lens, 0.1, 0, out8, 1.0, 1.0)
    native.decode_attention(q, as_bf16, tables.int().contiguous(), seq_lens, 0.1, 0, out16)
    assert torch.equal(out8, out16)
    if not native.prefill_supported(head_dim):
        return
    starts = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    qp = torch.randn(int(starts[-1]), heads, head_dim, generator=g).bfloat16()
    p8, p16 = torch.empty_like(qp), torch.empty_like(qp)
    native.prefill_attention(qp, cache, tables, starts, seq_lens.long(), 0.1, 0, p8, 1.0, 1.0)
    native.prefill_attention(qp, as_bf16, tables, starts, seq_lens.long(), 0.1, 0, p16)
    assert torch.equal(p8, p16)
