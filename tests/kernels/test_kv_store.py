"""store_kv (Triton) against store_kv_ref: strided K/V views, any block size, padding slots."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_testing import device_for, dtype_params, generator, randn  # noqa: E402

from membound.kernels.kv_store import store_kv, store_kv_ref  # noqa: E402

CASES = [  # (num_tokens, num_kv_heads, head_dim, num_blocks, block_size)
    (5, 2, 64, 4, 16),
    (9, 1, 80, 6, 8),
    (3, 8, 128, 2, 32),
    (4, 3, 96, 5, 8),
    (2, 2, 256, 3, 16),
]


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("case", CASES, ids=str)
def test_store_kv_matches_reference(case: tuple[int, ...], dtype: torch.dtype) -> None:
    num_tokens, kvh, d, num_blocks, bs = case
    dev = device_for(dtype)
    gen = generator(sum(case))
    # K and V are strided views of a fused QKV output, like the model's
    qkv = randn((num_tokens, 3 * kvh * d + 8), dtype, dev, gen)
    key = qkv[:, kvh * d : 2 * kvh * d].view(num_tokens, kvh, d)  # [T, KVH, D]
    value = qkv[:, 2 * kvh * d : 3 * kvh * d].view(num_tokens, kvh, d)
    slots = torch.randperm(num_blocks * bs, generator=gen)[:num_tokens].to(dev)
    slots[num_tokens // 2] = -1  # a padding row: skipped
    cache = torch.full((2, num_blocks, bs, kvh, d), float("nan"), dtype=dtype, device=dev)
    expected = cache.clone()
    store_kv(key, value, cache, slots)
    store_kv_ref(key, value, expected, slots)
    assert torch.equal(cache.nan_to_num(123.0), expected.nan_to_num(123.0))
    written = (~cache.isnan()).any(-1).any(-1).sum().item()  # slots touched, K and V
    assert written == 2 * (num_tokens - 1)


def test_store_kv_int32_slots_and_empty() -> None:
    dev = device_for(torch.float32)
    gen = generator(7)
    key = randn((3, 2, 16), torch.float32, dev, gen)
    value = randn((3, 2, 16), torch.float32, dev, gen)
    cache = torch.zeros(2, 2, 8, 2, 16, device=dev)
    store_kv(key, value, cache, torch.tensor([0, 9, 15], dtype=torch.int32, device=dev))
    assert torch.equal(cache[0, 1, 1], key[1]) and torch.equal(cache[1, 1, 7], value[2])
    store_kv(key[:0], value[:0], cache, torch.empty(0, dtype=torch.int64, device=dev))


def test_store_kv_rejects_bad_arguments() -> None:
    key = torch.zeros(3, 2, 16)
    cache = torch.zeros(2, 2, 8, 2, 16)
    with pytest.raises(ValueError, match="slot_mapping has 2 slots for 3 tokens"):
        store_kv(key, key, cache, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="heads/head_dim"):
        store_kv(key, key, torch.zeros(2, 2, 8, 1, 16), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="slot_mapping dtype"):
        store_kv(key, key, cache, torch.zeros(3))
