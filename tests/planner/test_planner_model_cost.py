"""Model costs: KV bytes, parameter counts, weight bytes with scales, FLOPs."""

from __future__ import annotations

import math

import pytest

from membound.planner.model_cost import (
    expected_experts_fraction,
    linear_groups,
    model_cost,
    param_counts,
)
from membound.planner.precision import WEIGHT_PRECISIONS, kv_dtype_bytes, weight_format
from membound.planner.presets import PRESET_NAMES, preset_shape


@pytest.mark.parametrize(
    ("model", "expected"),
    [("llama-2-70b", 327_680), ("llama-3-8b", 131_072), ("falcon-180b", 163_840)],
)
def test_kv_bytes_per_token_bf16_reference(model: str, expected: int) -> None:
    cost = model_cost(preset_shape(model), "bf16", "bf16", tp=1)
    assert cost.kv_bytes_per_token == expected
    assert cost.kv_bytes_per_token_per_gpu == expected


def test_kv_bytes_other_reference_models() -> None:
    # 2 x layers x kv_heads x head_dim x 2 bytes
    assert model_cost(preset_shape("llama-2-7b"), "bf16", "bf16").kv_bytes_per_token == 524_288
    assert model_cost(preset_shape("qwen2.5-7b"), "bf16", "bf16").kv_bytes_per_token == 57_344
    assert model_cost(preset_shape("qwen3-8b"), "bf16", "bf16").kv_bytes_per_token == 147_456
    assert model_cost(preset_shape("llama-3-8b"), "bf16", "fp8").kv_bytes_per_token == 65_536


def test_gqa_kv_is_not_mha_sized() -> None:
    """The GQA bug of public calculators: using q heads overstates 70B KV 8x."""
    shape = preset_shape("llama-2-70b")
    cost = model_cost(shape, "bf16", "bf16")
    mha = 2 * shape.num_layers * shape.num_attention_heads * shape.head_dim * 2
    assert cost.kv_bytes_per_token * 8 == mha


@pytest.mark.parametrize(("tp", "heads"), [(1, 8), (2, 4), (4, 2), (8, 1), (16, 1), (32, 1)])
def test_kv_heads_per_gpu_is_ceil_kv_heads_over_tp(tp: int, heads: int) -> None:
    cost = model_cost(preset_shape("llama-2-70b"), "bf16", "bf16", tp=tp)
    assert cost.kv_heads_per_gpu == heads
    assert cost.kv_bytes_per_token_per_gpu == 2 * 80 * heads * 128 * 2


def test_tp_beyond_kv_heads_stops_shrinking_kv_per_gpu() -> None:
    shape = preset_shape("qwen2.5-7b")  # 4 KV heads
    per_gpu = [model_cost(shape, "bf16", "bf16", tp).kv_bytes_per_token_per_gpu for tp in (4, 7)]
    assert per_gpu[0] == per_gpu[1] == 2 * 28 * 1 * 128 * 2
    # falcon-180b: 8 KV heads; at TP 8 each GPU holds one head, and the replicated k/v
    # projections make per-GPU weights larger than a plain 1/TP share
    falcon = preset_shape("falcon-180b")
    c8 = model_cost(falcon, "bf16", "bf16", 8)
    assert c8.kv_heads_per_gpu == 1
    assert c8.weight_bytes_per_gpu * 8 >= c8.weight_bytes


PUBLISHED_PARAMS = {
    "llama-2-7b": 6.74e9,
    "llama-2-70b": 68.98e9,  # 68,976,648,192 on the Hub ("70B")
    "llama-3-8b": 8.03e9,
    "llama-3-70b": 70.55e9,
    "mistral-7b": 7.24e9,
    "mixtral-8x7b": 46.7e9,
    "qwen2.5-7b": 7.61e9,
    "qwen3-8b": 8.2e9,
    "falcon-180b": 180e9,
}


@pytest.mark.parametrize("model", PRESET_NAMES)
def test_param_counts_within_one_percent_of_published(model: str) -> None:
    total = param_counts(preset_shape(model)).total
    assert total == pytest.approx(PUBLISHED_PARAMS[model], rel=0.01)


def test_exact_param_counts() -> None:
    assert param_counts(preset_shape("llama-2-70b")).total == 68_976_648_192
    assert param_counts(preset_shape("llama-2-7b")).total == 6_738_415_616
    assert param_counts(preset_shape("llama-3-8b")).total == 8_030_261_248


def test_mixtral_active_params() -> None:
    counts = param_counts(preset_shape("mixtral-8x7b"))
    assert counts.active == pytest.approx(12.9e9, rel=0.01)
    assert counts.total == pytest.approx(46.7e9, rel=0.01)
    dense = param_counts(preset_shape("llama-3-8b"))
    assert dense.active == dense.total


def test_weight_format_scale_overheads() -> None:
    out, inp = 4096, 4096
    n = out * inp
    assert weight_format("bf16").matrix_bytes(out, inp) == 2 * n
    assert weight_format("fp8").matrix_bytes(out, inp) == n + 4 * out
    # AWQ: 4-bit weights + per (128 inputs x 1 output) group: fp16 scale + 4-bit zero
    groups = (inp // 128) * out
    assert weight_format("int4-awq").matrix_bytes(out, inp) == n // 2 + groups * 20 // 8
    assert weight_format("int4-gptq").matrix_bytes(out, inp) == n // 2 + groups * 20 // 8 + 4 * inp
    assert weight_format("mxfp4").matrix_bytes(out, inp) == n // 2 + n // 32
    assert weight_format("nvfp4").matrix_bytes(out, inp) == n // 2 + n // 16 + 4


def test_weight_bytes_order_by_precision() -> None:
    shape = preset_shape("llama-3-70b")
    sizes = {p: model_cost(shape, p, "bf16").weight_bytes for p in WEIGHT_PRECISIONS}
    assert sizes["bf16"] == sizes["fp16"] == 2 * param_counts(shape).total
    assert sizes["bf16"] > sizes["fp8"] == sizes["int8"] > sizes["nvfp4"] > sizes["mxfp4"]
    assert sizes["mxfp4"] > sizes["int4-gptq"] > sizes["int4-awq"]
    # embeddings and lm_head stay bf16: fp8 is a little over half of bf16
    assert 0.5 < sizes["fp8"] / sizes["bf16"] < 0.53


def test_weights_per_gpu_split_over_tp() -> None:
    shape = preset_shape("llama-3-70b")
    one = model_cost(shape, "bf16", "bf16", 1)
    two = model_cost(shape, "bf16", "bf16", 2)
    assert two.weight_bytes == one.weight_bytes
    assert two.weight_bytes_per_gpu == pytest.approx(one.weight_bytes_per_gpu / 2, rel=1e-4)


def test_flops_per_token_is_twice_active_linear_params_plus_attention() -> None:
    shape = preset_shape("llama-3-8b")
    cost = model_cost(shape, "bf16", "bf16")
    linear = sum(g.active * g.out_features * g.in_features for g in linear_groups(shape))
    assert cost.linear_flops_per_token_per_gpu + cost.lm_head_flops_per_token_per_gpu == 2 * linear
    assert cost.attention_flops(1000) == 4 * 32 * 128 * 32 * 1000
    assert cost.prefill_attention_flops(4) == 4 * 32 * 128 * 32 * (1 + 2 + 3 + 4)


def test_sliding_window_caps_kv_per_sequence() -> None:
    cost = model_cost(preset_shape("mistral-7b"), "bf16", "bf16")
    assert cost.kv_bytes_for_context(10_000) == cost.kv_bytes_for_context(4096)
    assert cost.kv_bytes_for_context(1000) == 1000 * cost.kv_bytes_per_token
    assert cost.kv_bytes_for_context(1000, block_size=16) == 1008 * cost.kv_bytes_per_token


def test_moe_reads_only_touched_experts() -> None:
    shape = preset_shape("mixtral-8x7b")
    cost = model_cost(shape, "bf16", "bf16")
    assert expected_experts_fraction(shape, 1) == pytest.approx(2 / 8)
    assert cost.weight_read_bytes(1) < cost.weight_read_bytes(64) <= cost.weight_bytes
    assert cost.weight_read_bytes(10_000) == pytest.approx(
        cost.weight_bytes - cost.params.embedding * 2, rel=1e-6
    )


def test_kv_dtype_bytes() -> None:
    assert kv_dtype_bytes("bf16") == 2
    assert kv_dtype_bytes("fp8_e4m3") == 1
    assert kv_dtype_bytes("float32") == 4
    assert math.isclose(kv_dtype_bytes("int8"), 1)
