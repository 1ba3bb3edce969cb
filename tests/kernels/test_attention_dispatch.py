"""The attention layer's dispatch: metadata split into a decode batch and a varlen prefill
batch (contiguous or gathered tokens), backend selection, and the Triton layer against the
torch layer on a step that interleaves decodes and prefill chunks."""

from __future__ import annotations

import pytest
import torch

from membound.kernels.contract import (
    CPU_OPS,
    TORCH_OPS,
    KernelBackend,
    kernel_ops,
    select_kernel_backend,
)
from membound.kernels.cpu_attention import DecodePlan
from membound.layers.attention.layer import Attention
from membound.layers.attention.metadata import build_attention_metadata
from membound.layers.norm import RMSNorm

CPU = torch.device("cpu")


def test_metadata_splits_decodes_and_prefills() -> None:
    #   tokens: | prefill A (3) | decode | prefill B (2) | decode |
    md = build_attention_metadata([3, 1, 2, 1], [3, 9, 6, 5], [[0], [1, 2, 3], [4, 5], [6, 7]],
                                  4, CPU, sliding_window=4)  # fmt: skip
    assert md.decode is not None and md.prefill is not None
    assert md.decode.token_idx.tolist() == [3, 6] and md.decode.token_range is None
    assert md.decode.seq_lens.tolist() == [9, 5]
    assert md.decode.block_tables.tolist() == [[1, 2, 3], [6, 7, 0]]
    assert md.prefill.token_idx.tolist() == [0, 1, 2, 4, 5] and md.prefill.token_range is None
    assert md.prefill.query_start_loc.tolist() == [0, 3, 5]
    assert md.prefill.seq_lens.tolist() == [3, 6] and md.prefill.max_query_len == 3
    assert md.slot_mapping is not None and md.num_tokens == 7
    # positions 0-2 | 8 | 4-5 | 4, through each sequence's table
    assert md.slot_mapping.tolist() == [0, 1, 2, 12, 20, 21, 28]
    assert md.seq_lens_per_token.tolist() == [3, 3, 3, 9, 6, 6, 5]


def test_metadata_contiguous_ranges_and_no_cache() -> None:
    md = build_attention_metadata([1, 1, 4], [5, 2, 4], [[0, 1], [2], [3]], 4, CPU)
    assert md.decode is not None and md.decode.token_range == (0, 2)
    assert md.prefill is not None and md.prefill.token_range == (2, 6)
    md = build_attention_metadata([2, 1], [2, 1], None, 16, CPU)  # no KV cache: all prefill
    assert md.decode is None and md.prefill is not None and md.prefill.block_tables is None
    assert md.prefill.token_range == (0, 3) and md.slot_mapping is None
    assert md.prefill.query_start_loc.tolist() == [0, 2, 3]


def test_backend_selection() -> None:
    assert select_kernel_backend(CPU) is KernelBackend.CPU
    assert select_kernel_backend(CPU, "cpu") is KernelBackend.CPU
    assert select_kernel_backend(CPU, "torch") is KernelBackend.TORCH
    with pytest.raises(ValueError, match="not one of"):
        select_kernel_backend(CPU, "cuda")
    # layers get their ops when built; without any they run the references
    assert RMSNorm(8).ops is TORCH_OPS and Attention(4, 2, 16, 0.25).ops is TORCH_OPS
    assert RMSNorm(8, ops=CPU_OPS).ops is kernel_ops(KernelBackend.CPU) is CPU_OPS


@pytest.mark.parametrize("window", [None, 3, 6])
@pytest.mark.parametrize("with_cache", [True, False])
@pytest.mark.parametrize("backend", [KernelBackend.CPU, KernelBackend.TRITON])
def test_layer_matches_reference_layer_on_a_mixed_step(
    backend: KernelBackend, with_cache: bool, window: int | None
) -> None:
    """A step mixing decodes and prefill chunks (one with cached context), run through two
    layers sharing the step's metadata (and the CPU backend's per-step decode plan, built
    once as the runner does): the backend's layers against the reference layer. Window 3 skips whole blocks in decode and prefill."""
    if backend is KernelBackend.TRITON:
        pytest.importorskip("triton")
    assert select_kernel_backend(CPU, backend.value) is backend
    gen = torch.Generator().manual_seed(0)
    h, kvh, d, bs = 4, 2, 32, 4
    query_lens, seq_lens = [3, 1, 2, 1, 5, 1], [7, 9, 2, 5, 5, 1]
    tables = [[0, 1], [2, 3, 4], [5], [6, 7], [8, 9], [10]]
    md = build_attention_metadata(query_lens, seq_lens, tables if with_cache else None, bs, CPU,
                                  sliding_window=window)  # fmt: skip
    t = sum(query_lens)
    q, k, v = (torch.randn(t, n, d, generator=gen) for n in (h, kvh, kvh))
    caches = [torch.randn(2, 11, bs, kvh, d, generator=torch.Generator().manual_seed(s))
              for s in (1, 2)]  # fmt: skip
    outs = []
    for b in (KernelBackend.TORCH, backend):
        ops = kernel_ops(b)
        if with_cache and b is KernelBackend.CPU:
            assert md.decode is not None
            md.backend_decode = ops.plan_decode(
                block_tables=md.decode.block_tables, seq_lens=md.decode.seq_lens, block_size=bs,
                sliding_window=window, kv_cache=caches[0],
            )
            assert isinstance(md.backend_decode, DecodePlan)
        for cache in caches:  # two layers, each with its own cache, one metadata
            layer = Attention(h, kvh, d, d**-0.5, ops)
            outs.append(layer(q, k, v, cache if with_cache else None, md))  # [T, H * D]
    torch.testing.assert_close(outs[2], outs[0], atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(outs[3], outs[1], atol=2e-5, rtol=2e-5)


def test_kernels_import_and_refs_run_without_triton() -> None:
    """CPU users without triton: every kernel module imports, the references run, the
    launchers say what is missing."""
    import subprocess
    import sys

    code = """
import sys
sys.modules["triton"] = None  # import triton -> ImportError
import torch
from membound.kernels import activation, cpu_attention, kv_store, paged_attention, prefill_attention, rms_norm, rotary
from membound.kernels.contract import KernelBackend, select_kernel_backend
x = torch.randn(2, 8)
assert activation.silu_and_mul_ref(x).shape == (2, 4)
assert select_kernel_backend(torch.device("cpu")) is KernelBackend.CPU
try:
    activation.silu_and_mul(x)
except RuntimeError as e:
    assert "pip install triton" in str(e)
else:
    raise AssertionError("no error without triton")
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
