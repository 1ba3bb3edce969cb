"""MoE bytes per decode step, and the planner against published serving figures."""

from __future__ import annotations

import dataclasses
import math

import pytest

from membound.planner.audit import Claim, audit_claim
from membound.planner.hardware import HardwareTable
from membound.planner.model_cost import model_cost
from membound.planner.model_shape import ModelShape
from membound.planner.moe_cost import (
    MOE_FITTED_ON,
    expected_tiles,
    grouped_gemm_tile,
    moe_pass,
)
from membound.planner.plan import PlanRequest, evaluate
from membound.planner.presets import preset_shape
from membound.planner.published import (
    DENSE_CONTROLS,
    ISSUE_FIGURE,
    MOE_FIGURES,
    PublishedFigure,
)
from membound.planner.roofline import Efficiency, decode_step
from membound.planner.workload import Workload

TABLE = HardwareTable()
H100 = TABLE.get("h100-sxm")


def test_decode_reads_the_experts_its_tokens_touch() -> None:
    cost = model_cost(preset_shape("mixtral-8x7b"), "fp8", "bf16", tp=2)
    experts, e, k = cost.expert_bytes_per_gpu, 8, 2
    assert cost.expert_read_bytes(1) == round(experts * k / e)  # top-2 of 8 experts
    for batch in (2, 4, 16):  # expected distinct experts, uniform routing: E (1 - (1-k/E)^B)
        distinct = e * (1 - (1 - k / e) ** batch)
        assert cost.expert_read_bytes(batch) == pytest.approx(experts * distinct / e, rel=1e-9)
    assert cost.expert_read_bytes(256) == pytest.approx(experts, rel=1e-9)
    one = decode_step(cost, H100, 1, 0, Efficiency.ideal())
    assert one.bytes == cost.dense_read_bytes_per_gpu + cost.expert_read_bytes(1)


def test_shared_experts_are_read_every_step() -> None:
    config = {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
              "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 1000, "intermediate_size": 512,
              "moe_intermediate_size": 64, "shared_expert_intermediate_size": 128,
              "num_experts": 16, "num_experts_per_tok": 2, "max_position_embeddings": 512}  # fmt: skip
    shape = ModelShape.from_hf_dict(config, "tiny-qwen2-moe")
    cost = model_cost(shape, "bf16", "bf16")
    shared = 2 * 2 * (2 * 128 * 256 + 256 * 128)  # 2 layers: up (gate+up) and down, bf16
    experts = 2 * 2 * 16 * (2 * 64 * 256 + 256 * 64)
    assert cost.expert_bytes_per_gpu == experts
    dense_without_shared = model_cost(
        ModelShape.from_hf_dict({**config, "shared_expert_intermediate_size": 0}, "x"),
        "bf16", "bf16",
    ).dense_read_bytes_per_gpu  # fmt: skip
    assert cost.dense_read_bytes_per_gpu - dense_without_shared >= shared
    assert cost.weight_read_bytes(1) == cost.dense_read_bytes_per_gpu + experts * 2 // 16


def test_expected_tiles_is_the_binomial_expectation() -> None:
    for tokens, share, tile in [(1, 0.25, 16), (7, 0.25, 16), (40, 0.25, 16), (30, 0.5, 4),
                                (64, 1 / 16, 16), (12, 1.0, 8)]:  # fmt: skip
        exact = sum(math.comb(tokens, n) * share**n * (1 - share) ** (tokens - n)
                    * math.ceil(n / tile) for n in range(tokens + 1))  # fmt: skip
        assert expected_tiles(tokens, share, tile) == pytest.approx(exact, rel=1e-9)
    assert expected_tiles(0, 0.25, 16) == 0.0
    mean_rows = 4096 * 2 / 8  # a decode batch of 4096, top-2 of 8: 1,024 rows per expert
    assert expected_tiles(4096, 0.25, 128) == pytest.approx(8.5, abs=0.5)  # 8 or 9 tiles
    assert grouped_gemm_tile(mean_rows) == 128 and grouped_gemm_tile(0.25) == 16
    assert [grouped_gemm_tile(r) for r in (16, 17, 33, 64, 65)] == [16, 32, 64, 64, 128]


def test_moe_pass_pads_rows_and_moves_tokens() -> None:
    cost = model_cost(preset_shape("mixtral-8x7b"), "fp8", "bf16", tp=2)
    one = moe_pass(cost, 1)  # one token, two experts, each padded to a 16-row tile
    assert one.tile == 16 and one.flop_factor == pytest.approx(16.0)
    h, layers = 4096, 32
    assert one.permute_bytes == 4 * 1 * 2 * h * 2 * layers  # 4 passes x T k h x bf16 x layers
    big = moe_pass(cost, 4096)
    assert big.tile == 128 and 1.0 < big.flop_factor < 1.1  # 1,024 rows -> 8 or 9 tiles
    assert big.permute_bytes == 4096 * one.permute_bytes
    assert moe_pass(model_cost(preset_shape("llama-3-8b"), "bf16", "bf16"), 64).flop_factor == 1
    cpu = moe_pass(cost, 1, tiled=False)  # a CPU runs each expert's rows as they are
    assert (cpu.tile, cpu.flop_factor, cpu.permute_bytes) == (1, 1.0, one.permute_bytes)


def test_the_bound_leaves_out_moe_kernel_overheads() -> None:
    cost = model_cost(preset_shape("mixtral-8x7b"), "fp8", "bf16", tp=2)
    ideal = decode_step(cost, H100, 512, 192, Efficiency.ideal())
    assert ideal.serial_s == 0.0
    expected = decode_step(cost, H100, 512, 192, Efficiency())
    permute = moe_pass(cost, 512).permute_bytes
    assert expected.serial_s == pytest.approx(permute / (H100.bandwidth_gbs * 1e9 * 0.75))
    assert expected.total_s > ideal.total_s


def _per_gpu(model: str, gpu: str, precision: str, tp: int, i: int, o: int, c: int,
             kv: str = "bf16") -> tuple[float, float]:  # fmt: skip
    req = PlanRequest(shape=preset_shape(model), gpus=(TABLE.get(gpu),), precision=precision,
                      kv_dtype=kv, workload=Workload(i, o, c))  # fmt: skip
    option = evaluate(req, TABLE.get(gpu), tp)
    return (option.expected.output_tokens_per_s / tp, option.bound.output_tokens_per_s / tp)


def _predict(fig: PublishedFigure) -> tuple[float, float]:
    return _per_gpu(fig.model, fig.gpu, fig.precision, fig.tp, fig.input_len, fig.output_len,
                    fig.concurrency, fig.kv_dtype)  # fmt: skip


def test_no_moe_constant_is_fitted_on_a_checked_figure() -> None:
    """The MoE model is counted (moe_cost), not fitted: the default factor is 1, and no figure
    the checks below use is one a MoE constant was set from. (The factor used to be 0.5, set
    from the issue's 5,255 and then checked against it.)"""
    checked = {f.id for f in (*MOE_FIGURES, *DENSE_CONTROLS, ISSUE_FIGURE)}
    assert Efficiency().moe == 1.0 and Efficiency().moe_kernels
    assert not set(MOE_FITTED_ON) & checked
    assert len(checked) == len(MOE_FIGURES) + len(DENSE_CONTROLS) + 1  # ids are unique
    for fig in (*MOE_FIGURES, *DENSE_CONTROLS, ISSUE_FIGURE):
        assert fig.source and fig.tokens_per_s_per_gpu > 0


@pytest.mark.parametrize("fig", MOE_FIGURES + DENSE_CONTROLS, ids=lambda f: f.id)
def test_published_tensorrt_llm_mixtral_figures_within_2x(fig: PublishedFigure) -> None:
    """Held out: no factor of the model was set from these (TensorRT-LLM v0.9/v0.13/v0.14)."""
    expected, bound = _predict(fig)
    assert fig.tokens_per_s_per_gpu / 2 <= expected <= 2 * fig.tokens_per_s_per_gpu
    assert bound >= fig.tokens_per_s_per_gpu


@pytest.mark.parametrize("concurrency", [512, 1024, 4096])
def test_issue_figure_is_under_the_bound(concurrency: int) -> None:
    """Issue 24: Mixtral-8x7B FP8 on 2 x H100, 128/128, 5,255 output tok/s per GPU: the
    roofline bound must not go under it (it does not, by 3.6x or more)."""
    fig = dataclasses.replace(ISSUE_FIGURE, concurrency=concurrency)
    _, bound = _predict(fig)
    assert bound >= fig.tokens_per_s_per_gpu


@pytest.mark.xfail(strict=True, reason=(
    "issue 24's 5,255 tok/s/GPU is 2.3x below TensorRT-LLM's own v0.13/v0.14 figures for the "
    "same configuration (12,286 / 12,161), which the counted model meets at 1.23-1.24x; only "
    "a factor fitted on 5,255 itself lands within 2x of it (docs/planner.md, MoE)"))
@pytest.mark.parametrize("concurrency", [512, 1024, 4096])
def test_issue_figure_within_2x(concurrency: int) -> None:
    fig = dataclasses.replace(ISSUE_FIGURE, concurrency=concurrency)
    expected, _ = _predict(fig)
    assert fig.tokens_per_s_per_gpu / 2 <= expected <= 2 * fig.tokens_per_s_per_gpu


def test_mixtral_published_figure_is_not_flagged_impossible() -> None:
    claim = Claim(row=2, model="mixtral-8x7b", gpu="h100", precision="fp8", batch_size=512,
                  tokens_per_s=2 * 12161, tp=2, input_len=128, output_len=128)  # fmt: skip
    assert audit_claim(claim, TABLE).verdict == "plausible"


# (model, gpu, precision, input, output, concurrency, published output tok/s per GPU)
PUBLISHED = [
    ("llama-3-8b", "h100", "fp16", 128, 128, 4096, 15572),  # TensorRT-LLM
    ("llama-3-8b", "h100", "fp16", 1000, 1000, 4096, 7055),
    ("llama-3-8b", "h100", "fp8", 1000, 1000, 4096, 14108),
    ("llama-3-70b", "h200", "fp8", 128, 128, 4096, 3803),
    ("llama-3-70b", "h200", "fp8", 1000, 1000, 4096, 2585),
    ("llama-2-7b", "a100", "bf16", 128, 256, 1, 104.9),  # gpt-fast, batch 1
    ("llama-3-8b", "h100", "fp16", 128, 256, 1, 1000 / 6.6),  # SGLang 6.6 ms/token, batch 1
]


@pytest.mark.parametrize("case", PUBLISHED, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{c[3]}")
def test_dense_published_figures_stay_within_2x(case: tuple) -> None:
    model, gpu, precision, i, o, c, published = case
    kv = "fp8" if precision == "fp8" else "bf16"  # TensorRT-LLM's FP8 runs keep an FP8 KV cache
    expected, bound = _per_gpu(model, gpu, precision, 1, i, o, c, kv)
    assert published / 2 <= expected <= 2 * published
    assert bound >= published
