"""The CPU backend's weight layout (kernels/cpu_linear.py): which weights go column-major,
that the change keeps shapes, values, Parameter objects and outputs, and that a tied LM
head stays row-major for the embedding's lookups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from membound.kernels.contract import CPU_OPS
from membound.kernels.cpu_linear import (
    can_prepack,
    dense_weight,
    linear_prepacked,
    linear_prepacked_ref,
    prefers_column_major,
    prepack_weight,
    to_column_major,
)
from membound.layers.linear import Linear
from membound.layers.vocab_embedding import LMHead, VocabEmbedding


def is_column_major(w: torch.Tensor) -> bool:
    return w.stride() == (1, w.shape[0])


def test_rule_picks_wide_float_weights_only() -> None:
    assert prefers_column_major(torch.empty(5120, 768))  # gate_up
    assert prefers_column_major(torch.empty(32000, 768))  # an LM head
    assert not prefers_column_major(torch.empty(768, 768))  # o_proj
    assert not prefers_column_major(torch.empty(768, 2560))  # down_proj
    assert not prefers_column_major(torch.empty(5120, 768, dtype=torch.int32))  # packed ints
    # fp16/bf16 CPU GEMMs are far slower on a column-major weight: left alone
    assert not prefers_column_major(torch.empty(5120, 768, dtype=torch.float16))
    assert not prefers_column_major(torch.empty(5120, 768, dtype=torch.bfloat16))
    assert not prefers_column_major(torch.empty(4, 5120, 768))


def test_to_column_major_keeps_shape_values_and_parameter() -> None:
    w = torch.nn.Parameter(torch.randn(12, 4), requires_grad=False)
    before = w.detach().clone()
    assert to_column_major(w) and is_column_major(w)
    assert w.shape == (12, 4) and torch.equal(w, before)
    assert not to_column_major(w)  # already column-major: nothing to do


def test_cpu_backend_relayouts_wide_linears_and_keeps_outputs() -> None:
    wide, tall = Linear(16, 48, ops=CPU_OPS), Linear(48, 16, ops=CPU_OPS)
    for layer in (wide, tall):
        torch.nn.init.normal_(layer.weight)
    x16, x48 = torch.randn(3, 16), torch.randn(3, 48)
    expected = wide(x16), tall(x48)
    for layer in (wide, tall):  # the post-load step lays the weight out for the CPU backend
        layer.process_weights_after_loading()
    assert is_column_major(wide.weight) and tall.weight.is_contiguous()
    torch.testing.assert_close(wide(x16), expected[0])
    torch.testing.assert_close(tall(x48), expected[1])


def test_cpu_backend_leaves_a_tied_head_row_major() -> None:
    table = VocabEmbedding(64, 8)
    tied, untied = LMHead(64, 8, table, ops=CPU_OPS), LMHead(64, 8, None, None, CPU_OPS)
    for p in (table.weight, untied.weight):
        torch.nn.init.normal_(p)
    for head in (tied, untied):
        head.process_weights_after_loading()
    assert table.weight.is_contiguous() and tied.weight is table.weight
    assert is_column_major(untied.weight)
    h = torch.randn(2, 8)
    torch.testing.assert_close(untied(h), h @ untied.weight.t())


def test_engine_on_cpu_stores_wide_weights_column_major(tiny_llama: Path) -> None:
    from membound import LLM

    llm = LLM(str(tiny_llama), block_size=4, dtype="float32")
    model = llm.llm_engine.executor.driver.model
    weights = [m.weight for m in model.modules() if isinstance(m, Linear)]
    assert any(is_column_major(w) for w in weights)  # gate_up at least
    assert all(is_column_major(w) == prefers_column_major(w) for w in weights)


needs_bf16 = pytest.mark.skipif(
    not can_prepack(torch.empty(2, 2, dtype=torch.bfloat16)), reason="no oneDNN bf16 here"
)


@needs_bf16
@pytest.mark.parametrize("rows", [1, 7, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_prepacked_bf16_matches_f_linear(rows: int, bias: bool) -> None:
    w = torch.randn(96, 80).bfloat16()
    b = torch.randn(96).bfloat16() if bias else None
    x = torch.randn(rows, 80).bfloat16()
    packed = prepack_weight(w)
    assert packed.shape == w.shape and torch.equal(dense_weight(packed, 96), w)
    torch.testing.assert_close(
        linear_prepacked(x, packed, b), linear_prepacked_ref(x, w, b), rtol=1.6e-2, atol=1e-2
    )


def test_prepack_refuses_what_it_cannot_pack() -> None:
    assert not can_prepack(torch.empty(4, 4))  # fp32 keeps the column-major rule
    with pytest.raises(ValueError, match="2-D bf16"):
        prepack_weight(torch.empty(4, 4))
    if can_prepack(torch.empty(2, 2, dtype=torch.bfloat16)):
        with pytest.raises(ValueError, match="bf16 activations"):
            linear_prepacked(torch.randn(1, 4), prepack_weight(torch.randn(4, 4).bfloat16()))


@needs_bf16
def test_cpu_backend_prepacks_bf16_linears_and_heads() -> None:
    torch.manual_seed(0)
    lin = Linear(16, 48, ops=CPU_OPS).to(torch.bfloat16)
    table = VocabEmbedding(64, 16).to(torch.bfloat16)
    tied = LMHead(64, 16, table, ops=CPU_OPS)
    untied = LMHead(64, 16, None, None, CPU_OPS).to(torch.bfloat16)
    for p in (lin.weight, table.weight, untied.weight):
        torch.nn.init.normal_(p)
    x = torch.randn(3, 16).bfloat16()
    expected = lin(x), tied(x), untied(x)
    for layer in (lin, tied, untied):  # the post-load step lays weights out for the CPU
        layer.process_weights_after_loading()
    assert lin.weight.is_mkldnn and untied.weight.is_mkldnn
    assert not table.weight.is_mkldnn and tied.weight is table.weight  # lookups need rows
    for got, want in zip((lin(x), tied(x), untied(x)), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1.6e-2, atol=1e-2)
    assert lin.quant_method.dequantize(lin).shape == (48, 16)
