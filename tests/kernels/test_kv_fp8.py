"""FP8 KV cache in every backend: the store saturates and scales, and decode / prefill
attention over an FP8 cache (Triton, the CPU backend and the references) equals attention
over the same cache dequantized into the query's dtype with scales 1.

The oracle is independent of the scale folding each kernel does: it dequantizes explicitly
(stored * scale) and runs the plain-dtype reference."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import test_paged_attention as decode_cases  # noqa: E402
import test_prefill_attention as prefill_cases  # noqa: E402
from kernel_testing import assert_close, device_for, generator, poisoned  # noqa: E402

from membound.kernels import cpu_attention  # noqa: E402
from membound.kernels.kv_quant import (  # noqa: E402
    FP8_KV_DTYPE,
    FP8_MAX,
    dequantize_kv_ref,
    quantize_kv_ref,
)
from membound.kernels.kv_store import store_kv, store_kv_ref  # noqa: E402
from membound.kernels.paged_attention import (  # noqa: E402
    paged_decode_attention,
    paged_decode_attention_ref,
)
from membound.kernels.prefill_attention import (  # noqa: E402
    prefill_attention,
    prefill_attention_ref,
)

K_SCALE, V_SCALE = 0.04, 0.015
DTYPES = (torch.float16, torch.float32)  # the interpreter's; bf16 runs in the gpu-marked grid


def fp8_cache(shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    """Random stored values covering the E4M3 range, NaN-free."""
    x = torch.randn(shape, generator=generator(seed)) * 60.0
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8_KV_DTYPE).to(device)


def dequantized(kv_cache: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.stack([dequantize_kv_ref(kv_cache[0], K_SCALE, dtype),
                        dequantize_kv_ref(kv_cache[1], V_SCALE, dtype)])  # fmt: skip


def test_quantize_saturates_and_round_trips() -> None:
    x = torch.tensor([0.0, 1.0, -3.5, 1e6, -1e6, 447.0, 0.3])
    q = quantize_kv_ref(x, 2.0, FP8_KV_DTYPE)
    assert q.dtype == FP8_KV_DTYPE and not q.float().isnan().any()
    assert q.float()[3] == FP8_MAX and q.float()[4] == -FP8_MAX  # saturated, not NaN
    back = dequantize_kv_ref(q, 2.0, torch.float32)
    small = x.abs() < 2.0 * FP8_MAX
    # E4M3 keeps 3 mantissa bits: relative error <= 2^-4 once normal
    torch.testing.assert_close(back[small], x[small], rtol=2**-4, atol=2.0 * 2**-9)
    assert quantize_kv_ref(x, 1.0, torch.float16).dtype == torch.float16  # plain cast


@pytest.mark.parametrize("store", [store_kv_ref, store_kv], ids=["ref", "triton"])
def test_store_scales_and_saturates(store) -> None:  # noqa: ANN001
    dev = device_for(torch.float32)
    gen = generator(3)
    grid = torch.randn(6, 2, 32, generator=gen).mul(50).to(FP8_KV_DTYPE).float()
    # values exactly representable after scaling, so any rounding mode gives the same bytes
    # (Triton's interpreter rounds half up; GPUs and torch round to nearest even)
    key, value = (grid * K_SCALE).to(dev), (grid.flip(0) * V_SCALE).to(dev)
    key[0, 0, :4] = torch.tensor([1e4, -1e4, 500 * K_SCALE, -449 * K_SCALE])  # saturate
    cache = torch.zeros(2, 4, 8, 2, 32, dtype=FP8_KV_DTYPE, device=dev)
    slots = torch.tensor([0, 5, 9, -1, 17, 31], device=dev)
    store(key, value, cache, slots, k_scale=K_SCALE, v_scale=V_SCALE)
    stored_k = cache[0].view(-1, 2, 32)[slots[slots >= 0]].float()
    assert stored_k[0, 0, :4].tolist() == [FP8_MAX, -FP8_MAX, FP8_MAX, -FP8_MAX]
    assert torch.equal(stored_k[1:], grid[[1, 2, 4, 5]])
    stored_v = cache[1].view(-1, 2, 32)[slots[slots >= 0]].float()
    assert torch.equal(stored_v, grid.flip(0)[[0, 1, 2, 4, 5]])
    assert cache[0].view(-1, 2, 32)[1:5].float().abs().sum() == 0  # only the slots written


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", decode_cases.CASES, ids=str)
def test_decode_over_fp8_cache(case: tuple, dtype: torch.dtype) -> None:
    inputs = decode_cases.make_inputs(case, dtype, decode_cases.SEQ_LENS, seed=sum(case[:5]))
    dev = inputs["query"].device
    inputs["kv_cache"] = fp8_cache(tuple(inputs["kv_cache"].shape), sum(case[:5]), dev)
    window = case[5]
    plain = dict(inputs, kv_cache=dequantized(inputs["kv_cache"], dtype))
    expected = paged_decode_attention_ref(**plain, sliding_window=window)
    scales = {"k_scale": K_SCALE, "v_scale": V_SCALE}
    for fn in (paged_decode_attention, paged_decode_attention_ref,
               cpu_attention.paged_decode_attention_cpu):  # fmt: skip
        out = poisoned(inputs["query"].shape, dtype, dev)
        fn(**inputs, sliding_window=window, num_splits=case[4], out=out, **scales)
        assert_close(out, expected, f"{fn.__name__} {case} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", prefill_cases.CASES, ids=str)
def test_prefill_over_fp8_cache(case: tuple, dtype: torch.dtype) -> None:
    seqs = prefill_cases.SEQS
    inputs = prefill_cases.make_inputs(case, dtype, seqs, seed=sum(case[:4]))
    dev = inputs["query"].device
    inputs["kv_cache"] = fp8_cache(tuple(inputs["kv_cache"].shape), sum(case[:4]), dev)
    window = case[4]
    plain = dict(inputs, kv_cache=dequantized(inputs["kv_cache"], dtype))
    expected = prefill_attention_ref(**plain, sliding_window=window)
    scales = {"k_scale": K_SCALE, "v_scale": V_SCALE}
    for fn in (prefill_attention, prefill_attention_ref, cpu_attention.prefill_attention_cpu):
        out = poisoned(inputs["query"].shape, dtype, dev)
        fn(**inputs, sliding_window=window, max_query_len=max(n for n, _ in seqs), out=out,
           **scales)  # fmt: skip
        assert_close(out, expected, f"{fn.__name__} {case} {dtype}")


def test_scales_are_refused_for_a_float_cache() -> None:
    dev = device_for(torch.float32)
    key = torch.zeros(2, 1, 16, device=dev)
    cache = torch.zeros(2, 2, 4, 1, 16, device=dev)
    with pytest.raises(ValueError, match="scales apply to an FP8 cache only"):
        store_kv(key, key, cache, torch.tensor([0, 1], device=dev), k_scale=0.5)
    with pytest.raises(ValueError, match="k_scale must be a positive number"):
        store_kv(key, key, cache.to(FP8_KV_DTYPE), torch.tensor([0, 1], device=dev), k_scale=0.0)
