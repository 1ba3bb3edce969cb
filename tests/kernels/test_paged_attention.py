"""paged_decode_attention (Triton) against paged_decode_attention_ref: GQA/MQA/MHA, head_dim
64/80/96/128/256, block sizes 8..64, flash-decoding splits, sliding window, padding rows."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_testing import (  # noqa: E402
    assert_close,
    device_for,
    dtype_params,
    generator,
    gpu,
    needs_cuda,
    poisoned,
    randn,
)

from membound.kernels.paged_attention import (  # noqa: E402
    choose_num_splits,
    paged_decode_attention,
    paged_decode_attention_ref,
)

CASES = [  # (num_heads, num_kv_heads, head_dim, block_size, num_splits, sliding_window)
    (4, 4, 64, 16, 1, None),
    (8, 2, 80, 16, 1, None),
    (4, 1, 96, 32, 2, None),
    (8, 2, 128, 8, 3, None),
    (2, 1, 256, 16, 1, None),
    (4, 2, 64, 32, 4, 10),
    (4, 2, 64, 64, 1, 7),
]
SEQ_LENS = [1, 16, 37, 70]  # one token, a full block, ragged, several tiles


def make_inputs(case: tuple, dtype: torch.dtype, seq_lens: list[int], seed: int) -> dict:
    h, kvh, d, bs = case[:4]
    dev = device_for(dtype)
    gen = generator(seed)
    max_blocks = -(-max(seq_lens) // bs) + 1  # one spare column of padding
    num_blocks = len(seq_lens) * max_blocks + 3
    perm = torch.randperm(num_blocks, generator=gen)
    tables = perm[: len(seq_lens) * max_blocks].view(len(seq_lens), max_blocks)
    return {
        "query": randn((len(seq_lens), h, d), dtype, dev, gen),  # [S, H, D]
        "kv_cache": randn((2, num_blocks, bs, kvh, d), dtype, dev, gen),
        "block_tables": tables.to(dev),  # [S, max_blocks]
        "seq_lens": torch.tensor(seq_lens, dtype=torch.int32, device=dev),
        "scale": d**-0.5,
    }


def check_case(case: tuple, dtype: torch.dtype, seq_lens: list[int], seed: int) -> None:
    inputs = make_inputs(case, dtype, seq_lens, seed)
    num_splits, window = case[4], case[5]
    out = poisoned(inputs["query"].shape, dtype, inputs["query"].device)
    got = paged_decode_attention(**inputs, sliding_window=window, num_splits=num_splits, out=out)
    assert got is out
    expected = paged_decode_attention_ref(**inputs, sliding_window=window)
    assert_close(out, expected, f"case {case} {dtype}")


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("case", CASES, ids=str)
def test_decode_matches_reference(case: tuple, dtype: torch.dtype) -> None:
    check_case(case, dtype, SEQ_LENS, seed=sum(case[:5]))


@gpu
@needs_cuda
@pytest.mark.parametrize("head_dim", [64, 80, 96, 128, 256])
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("num_splits", [1, 4])
def test_decode_grid_bf16_gpu(head_dim: int, block_size: int, num_splits: int) -> None:
    case = (8, 2, head_dim, block_size, num_splits, None)
    check_case(case, torch.bfloat16, [1, 100, 517, 2049], seed=head_dim + block_size)


def test_decode_strided_query_and_auto_splits() -> None:
    dtype = torch.float32
    inputs = make_inputs((4, 2, 64, 16), dtype, [5, 33], seed=3)
    q = inputs.pop("query")
    wide = torch.zeros(q.shape[0], q.shape[1] * 3, q.shape[2], device=q.device)
    wide[:, : q.shape[1]] = q
    view = wide[:, : q.shape[1]]  # non-contiguous [S, H, D]
    got = paged_decode_attention(view, **inputs)
    assert_close(got, paged_decode_attention_ref(q, **inputs), "strided query")


def test_padding_rows_give_zeros() -> None:
    """seq_len 0 marks a CUDA-graph padding row: zeros, never NaN, in kernel and reference."""
    inputs = make_inputs((4, 2, 64, 16), torch.float32, [0, 20, 0], seed=5)
    for splits in (1, 3):
        got = paged_decode_attention(**inputs, num_splits=splits)
        assert torch.equal(got[0], torch.zeros_like(got[0])) and torch.equal(got[2], got[0])
        assert_close(got, paged_decode_attention_ref(**inputs), f"padding, {splits} splits")


def test_choose_num_splits() -> None:
    assert choose_num_splits(1, 8, 32768, sm_count=1) == 1  # CPU: nothing to fill
    assert choose_num_splits(0, 8, 32768, sm_count=132) == 1
    assert choose_num_splits(1, 8, 32768, sm_count=132) == 33  # two programs per SM
    assert choose_num_splits(1, 8, 1024, sm_count=132) == 4  # >= 256 keys per split
    assert choose_num_splits(1, 1, 10**6, sm_count=132) == 64  # capped
    assert choose_num_splits(64, 8, 32768, sm_count=132) == 1  # the batch fills the GPU


def test_decode_rejects_bad_arguments() -> None:
    inputs = make_inputs((4, 2, 64, 16), torch.float32, [5], seed=1)
    with pytest.raises(ValueError, match="kv_cache dtype"):
        paged_decode_attention(**{**inputs, "kv_cache": inputs["kv_cache"].half()})
    with pytest.raises(ValueError, match="not a multiple of num_kv_heads"):
        paged_decode_attention(**{**inputs, "query": inputs["query"][:, :3]})
    with pytest.raises(ValueError, match="num_splits"):
        paged_decode_attention(**inputs, num_splits=0)
    with pytest.raises(ValueError, match="do not match"):
        paged_decode_attention(**{**inputs, "seq_lens": inputs["seq_lens"].repeat(2)})


@gpu
@needs_cuda
def test_new_split_counts_do_not_recompile() -> None:
    """The split count is a runtime argument: any number of splits reuses the two compiled
    decode variants (split / not) and the one merge kernel."""
    from membound.kernels import paged_attention as pa

    case = (8, 2, 128, 16)
    inputs = make_inputs(case, torch.bfloat16, [700, 1500], seed=9)

    def compiled() -> int:
        return sum(
            len(cache[0]) for k in (pa._decode_kernel, pa._merge_splits_kernel)
            for cache in k.device_caches.values()
        )  # fmt: skip

    for splits in (1, 2):
        paged_decode_attention(**inputs, num_splits=splits)
    before = compiled()
    for splits in (3, 5, 7, 16, 33, 64):
        got = paged_decode_attention(**inputs, num_splits=splits)
        assert_close(got, paged_decode_attention_ref(**inputs), f"{splits} splits")
    assert compiled() == before
