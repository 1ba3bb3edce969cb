"""moe_gemm (Triton grouped GEMM over tokens sorted by expert) against moe_gemm_ref, and
moe_align's layout: both GEMMs of an MoE MLP, expert parallelism (dropped pairs), argument
checks. In the interpreter on CPU (fp16/fp32); bf16 on a GPU."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before triton is imported (tests/kernels/conftest.py too)
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from kernel_testing import assert_close, device_for, dtype_params, generator, poisoned, randn  # noqa: E402

from membound.kernels.moe_gemm import BLOCK_M, moe_align, moe_gemm, moe_gemm_ref  # noqa: E402

# (tokens, experts, top_k, K, N)
CASES = [
    (1, 4, 2, 32, 48),  # one decode token
    (7, 4, 2, 48, 40),  # ragged K and N
    (20, 8, 2, 64, 96),  # more pairs than a block for some experts
    (33, 3, 1, 16, 64),  # top-1
    (5, 16, 4, 64, 32),  # many experts, most empty
]


def routed(t: int, e: int, k: int, gen: torch.Generator, dev: torch.device):  # type: ignore[no-untyped-def]
    logits = torch.randn(t, e, generator=gen)
    weights, ids = torch.softmax(logits, -1).topk(k)
    return weights.to(dev), ids.to(dev)


def direct(a: torch.Tensor, w: torch.Tensor, ids: torch.Tensor, a_row_div: int,
           weights: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """Row by row, no sorting: out[p] = a[p // div] @ w[ids[p]]^T (* weights[p])."""
    flat = ids.reshape(-1)
    rows = []
    for p in range(flat.numel()):
        y = a[p // a_row_div].float() @ w[flat[p]].float().T
        rows.append(y * weights.reshape(-1)[p].float() if weights is not None else y)
    return torch.stack(rows)


@pytest.mark.parametrize("case", CASES)
def test_align_layout(case: tuple) -> None:
    t, e, k, _, _ = case
    _, ids = routed(t, e, k, generator(1), torch.device("cpu"))
    al = moe_align(ids, e)
    pairs = al.num_pairs
    blocks = al.sorted_token_ids.view(-1, BLOCK_M).long()
    flat = ids.reshape(-1)
    seen = []
    for b, expert in enumerate(al.expert_ids.tolist()):
        real = [p for p in blocks[b].tolist() if p < pairs]
        if expert < 0:
            assert not real  # unused blocks past the end hold padding only
        assert all(flat[p] == expert for p in real)
        seen += real
    assert sorted(seen) == list(range(pairs))  # every pair exactly once
    assert al.sorted_token_ids.numel() >= pairs + e * (BLOCK_M - 1)  # worst case, no sync


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", dtype_params())
def test_both_gemms_match_reference(case: tuple, dtype: torch.dtype) -> None:
    t, e, k, kdim, n = case
    dev = device_for(dtype)
    gen = generator(7)
    weights, ids = routed(t, e, k, gen, dev)
    x = randn((t, kdim), dtype, dev, gen)
    w1 = randn((e, n, kdim), dtype, dev, gen) * 0.2
    al = moe_align(ids, e)
    args = (al.sorted_token_ids, al.expert_ids, al.num_pairs, al.block_m)
    # gate/up GEMM: a row per token, read once per slot
    out = moe_gemm(x, w1, *args, k, out=poisoned((t * k, n), dtype, dev))
    assert_close(out, moe_gemm_ref(x, w1, *args, k), f"gate/up {case}")
    assert_close(out, direct(x, w1, ids, k, None).to(dtype), f"gate/up direct {case}")
    # down GEMM: a row per pair, scaled by its routing weight
    h = randn((t * k, kdim), dtype, dev, gen)
    out = moe_gemm(h, w1, *args, 1, weights.reshape(-1), out=poisoned((t * k, n), dtype, dev))
    assert_close(out, moe_gemm_ref(h, w1, *args, 1, weights), f"down {case}")
    assert_close(out, direct(h, w1, ids, 1, weights).to(dtype), f"down direct {case}")


@pytest.mark.parametrize("dtype", [torch.float32])
def test_expert_parallel_skips_other_ranks_experts(dtype: torch.dtype) -> None:
    """With an expert map, pairs routed to experts held elsewhere get no block: their rows
    keep what ``out`` held (zeros by default), local experts use local weight indices."""
    t, e, k, kdim, n = 9, 4, 2, 32, 32
    dev = device_for(dtype)
    gen = generator(3)
    _, ids = routed(t, e, k, gen, dev)
    x = randn((t, kdim), dtype, dev, gen)
    w = randn((e, n, kdim), dtype, dev, gen)
    emap = torch.tensor([-1, -1, 0, 1], device=dev)  # this rank holds experts 2 and 3
    al = moe_align(ids, 2, expert_map=emap)
    args = (al.sorted_token_ids, al.expert_ids, al.num_pairs, al.block_m, k)
    got = moe_gemm(x, w[2:].contiguous(), *args)
    ref = moe_gemm_ref(x, w[2:].contiguous(), *args)
    full = direct(x, w, ids, k, None).to(dtype)
    mine = (ids.reshape(-1) >= 2).unsqueeze(-1)
    assert_close(got, torch.where(mine, full, torch.zeros_like(full)), "expert parallel")
    assert_close(ref, got, "reference")


def test_empty_batch_and_argument_checks() -> None:
    dev = torch.device("cpu")
    w = torch.randn(4, 16, 32)
    al = moe_align(torch.zeros((0, 2), dtype=torch.int64), 4)
    args = (al.sorted_token_ids, al.expert_ids, al.num_pairs, al.block_m, 2)
    assert moe_gemm(torch.randn(0, 32), w, *args).shape == (0, 16)
    _, ids = routed(3, 4, 2, generator(0), dev)
    al = moe_align(ids, 4)
    args = (al.sorted_token_ids, al.expert_ids, al.num_pairs, al.block_m)
    with pytest.raises(ValueError, match="w has K=32 but a has K=8"):
        moe_gemm(torch.randn(3, 8), w, *args, 2)
    with pytest.raises(ValueError, match="not 6 pairs"):
        moe_gemm(torch.randn(3, 32), w, *args, 1)
    with pytest.raises(ValueError, match="w dtype"):
        moe_gemm(torch.randn(3, 32), w.half(), *args, 2)
    with pytest.raises(ValueError, match="block_m must be a power of two"):
        moe_gemm(torch.randn(3, 32), w, al.sorted_token_ids, al.expert_ids, 6, 12, 2)
