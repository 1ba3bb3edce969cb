"""prefill_attention / varlen_attention (Triton) against their references: varlen batches of
new tokens over cached prefixes (chunked prefill, prefix hits), GQA, sliding window."""

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

from membound.kernels.prefill_attention import (  # noqa: E402
    prefill_attention,
    prefill_attention_ref,
    varlen_attention,
    varlen_attention_ref,
)

CASES = [  # (num_heads, num_kv_heads, head_dim, block_size, sliding_window)
    (4, 4, 64, 16, None),
    (8, 2, 80, 8, None),
    (4, 1, 96, 32, None),
    (4, 2, 128, 16, 9),
    (2, 1, 256, 16, None),
    (8, 1, 64, 64, 20),
]
# (new tokens, cached context) per sequence: a fresh prompt, a chunk after a prefix-cache
# hit, a long chunk crossing query and key tiles, a single token, an empty sequence
SEQS = [(7, 0), (5, 13), (40, 30), (1, 6), (0, 4)]


def make_inputs(case: tuple, dtype: torch.dtype, seqs: list[tuple[int, int]], seed: int) -> dict:
    h, kvh, d, bs = case[:4]
    dev = device_for(dtype)
    gen = generator(seed)
    q_lens = [n for n, _ in seqs]
    seq_lens = [n + c for n, c in seqs]
    max_blocks = -(-max(seq_lens) // bs)
    num_blocks = len(seqs) * max_blocks + 2
    tables = torch.randperm(num_blocks, generator=gen)[: len(seqs) * max_blocks]
    qsl = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return {
        "query": randn((sum(q_lens), h, d), dtype, dev, gen),  # [T, H, D]
        "kv_cache": randn((2, num_blocks, bs, kvh, d), dtype, dev, gen),
        "block_tables": tables.view(len(seqs), max_blocks).to(dev),
        "query_start_loc": qsl.to(dev),  # [S + 1]
        "seq_lens": torch.tensor(seq_lens, dtype=torch.int32, device=dev),
        "scale": d**-0.5,
    }


def check_case(case: tuple, dtype: torch.dtype, seqs: list[tuple[int, int]], seed: int) -> None:
    inputs = make_inputs(case, dtype, seqs, seed)
    window = case[4]
    q = inputs["query"]
    out = poisoned(q.shape, dtype, q.device)
    got = prefill_attention(**inputs, sliding_window=window,
                            max_query_len=max(n for n, _ in seqs), out=out)  # fmt: skip
    assert got is out
    assert_close(out, prefill_attention_ref(**inputs, sliding_window=window), f"{case} {dtype}")


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("case", CASES, ids=str)
def test_prefill_matches_reference(case: tuple, dtype: torch.dtype) -> None:
    check_case(case, dtype, SEQS, seed=sum(case[:4]))


@pytest.mark.parametrize("dtype", dtype_params())
@pytest.mark.parametrize("case", CASES[:4], ids=str)
def test_varlen_without_cache_matches_reference(case: tuple, dtype: torch.dtype) -> None:
    h, kvh, d, _, window = case
    dev = device_for(dtype)
    gen = generator(sum(case[:4]))
    q_lens = [7, 0, 33, 1]
    qsl = torch.tensor([0, 7, 7, 40, 41], dtype=torch.int32, device=dev)
    qkv = randn((sum(q_lens), h + 2 * kvh, d), dtype, dev, gen)  # fused QKV rows
    q, k, v = qkv.split([h, kvh, kvh], dim=1)  # strided views
    out = poisoned(q.shape, dtype, dev)
    varlen_attention(q, k, v, qsl, d**-0.5, window, max(q_lens), out=out)
    expected = varlen_attention_ref(q, k, v, qsl, d**-0.5, window)
    assert_close(out, expected, f"varlen {case} {dtype}")


@gpu
@needs_cuda
@pytest.mark.parametrize("head_dim", [64, 80, 96, 128, 256])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("window", [None, 100])
def test_prefill_grid_bf16_gpu(head_dim: int, block_size: int, window: int | None) -> None:
    seqs = [(300, 0), (129, 700), (1, 50), (64, 64)]
    check_case((8, 2, head_dim, block_size, window), torch.bfloat16, seqs, seed=head_dim)


def test_max_query_len_is_optional() -> None:
    inputs = make_inputs((4, 2, 64, 16), torch.float32, [(3, 2), (9, 0)], seed=11)
    got = prefill_attention(**inputs)
    assert_close(got, prefill_attention_ref(**inputs), "max_query_len derived")


def test_prefill_rejects_bad_arguments() -> None:
    inputs = make_inputs((4, 2, 64, 16), torch.float32, [(3, 2)], seed=1)
    with pytest.raises(ValueError, match="do not match"):
        prefill_attention(**{**inputs, "seq_lens": inputs["seq_lens"].repeat(2)})
    with pytest.raises(ValueError, match="query_start_loc dtype"):
        prefill_attention(**{**inputs, "query_start_loc": inputs["query_start_loc"].float()})
    with pytest.raises(ValueError, match="head_dim 8 is below"):
        prefill_attention(**{**inputs, "query": inputs["query"][..., :8]})
