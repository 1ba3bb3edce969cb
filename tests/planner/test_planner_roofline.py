"""Roofline predictions: hand-computed cases, bounds never beaten, fallbacks, queueing."""

from __future__ import annotations

import itertools

import pytest

from membound.planner.errors import PlannerError
from membound.planner.hardware import HardwareTable
from membound.planner.model_cost import model_cost
from membound.planner.plan import PlanRequest, evaluate
from membound.planner.presets import preset_shape
from membound.planner.roofline import (
    Efficiency,
    decode_step,
    linear_peak_tflops,
    predict,
    prefill,
)
from membound.planner.workload import Workload

TABLE = HardwareTable()
H100 = TABLE.get("h100-sxm")

# Llama-3-8B by hand: per layer q 4096x4096, k,v 1024x4096 each, o 4096x4096,
# gate+up 2x14336x4096, down 4096x14336; lm_head 128256x4096; 65 RMSNorms of 4096.
LAYER = 4096 * 4096 * 2 + 2 * 1024 * 4096 + 3 * 4096 * 14336
LINEAR = 32 * LAYER  # 6,979,321,856
LM_HEAD = 128256 * 4096
NORMS = 65 * 4096


def test_hand_case_memory_bound_batch1_decode() -> None:
    cost = model_cost(preset_shape("llama-3-8b"), "bf16", "bf16")
    step = decode_step(cost, H100, batch=1, context=1000, eff=Efficiency.ideal())
    bytes_read = 2 * (LINEAR + LM_HEAD + NORMS) + 1000 * 131_072  # weights once + KV
    flops = 2 * (LINEAR + LM_HEAD) + 4 * 32 * 128 * 32 * 1000
    assert step.bytes == bytes_read == 15_140_921_344
    assert step.flops == flops
    assert step.memory_s == pytest.approx(bytes_read / 3350e9, rel=1e-12)
    assert step.compute_s == pytest.approx(flops / 989e12, rel=1e-12)
    assert step.bound == "memory"
    assert 1 / step.total_s == pytest.approx(221.25, abs=0.01)  # tokens/s bound


def test_hand_case_compute_bound_large_batch_decode() -> None:
    cost = model_cost(preset_shape("llama-3-8b"), "bf16", "bf16")
    step = decode_step(cost, H100, batch=1024, context=128, eff=Efficiency.ideal())
    flops = 1024 * (2 * (LINEAR + LM_HEAD) + 4 * 32 * 128 * 32 * 128)
    bytes_read = 2 * (LINEAR + LM_HEAD + NORMS) + 1024 * 128 * 131_072
    assert step.bound == "compute"
    assert step.compute_s == pytest.approx(flops / 989e12, rel=1e-12)
    assert step.memory_s == pytest.approx(bytes_read / 3350e9, rel=1e-12)
    assert 1024 / step.total_s == pytest.approx(65_400, rel=0.01)


def test_hand_case_prefill_is_compute_bound() -> None:
    cost = model_cost(preset_shape("llama-3-8b"), "bf16", "bf16")
    pre = prefill(cost, H100, num_seqs=1, input_len=4096, eff=Efficiency.ideal())
    flops = 4096 * 2 * LINEAR + 2 * LM_HEAD + 4 * 32 * 128 * 32 * (4096 * 4097 // 2)
    assert pre.flops == flops and pre.bound == "compute"
    assert pre.total_s == pytest.approx(flops / 989e12, rel=1e-12)


def test_expected_uses_efficiency() -> None:
    cost = model_cost(preset_shape("llama-3-8b"), "bf16", "bf16")
    ideal = decode_step(cost, H100, 1, 1000, Efficiency.ideal())
    real = decode_step(cost, H100, 1, 1000, Efficiency(memory=0.5))
    assert real.total_s == pytest.approx(2 * ideal.total_s)


MODELS = ["llama-3-8b", "llama-2-70b", "mixtral-8x7b", "qwen2.5-7b", "falcon-180b"]
GPUS = ["a100", "h100-sxm", "h200", "b200", "l40s"]
PRECISIONS = ["bf16", "fp8", "int4-awq", "nvfp4"]


@pytest.mark.parametrize(("model", "precision"), itertools.product(MODELS, PRECISIONS))
def test_no_prediction_is_ever_faster_than_its_bound(model: str, precision: str) -> None:
    shape = preset_shape(model)
    for gpu_name, concurrency, tp in itertools.product(GPUS, (1, 64), (1, 2, 8)):
        if shape.num_attention_heads % tp:
            continue
        req = PlanRequest(shape, (TABLE.get(gpu_name),), precision, "bf16",
                          Workload(512, 128, concurrency))  # fmt: skip
        o = evaluate(req, TABLE.get(gpu_name), tp)
        assert o.expected.output_tokens_per_s <= o.bound.output_tokens_per_s
        assert o.expected.ttft_s >= o.bound.ttft_s
        assert o.expected.tpot_s >= o.bound.tpot_s
        assert o.expected.decode.total_s >= o.bound.decode.total_s


def test_fp8_on_a100_and_fp4_on_h100_are_weight_only() -> None:
    a100 = TABLE.get("a100")
    peak, note = linear_peak_tflops(a100, "fp8")
    assert peak == 312 and note is not None and "weight-only" in note
    peak, note = linear_peak_tflops(H100, "nvfp4")
    assert peak == 989 and "no FP4" in (note or "")
    assert linear_peak_tflops(TABLE.get("b200"), "nvfp4") == (9000, None)
    assert linear_peak_tflops(H100, "fp8") == (1979, None)
    peak, note = linear_peak_tflops(H100, "int4-awq")
    assert peak == 989 and "weight-only" in (note or "")


def test_queueing_once_capacity_is_exceeded() -> None:
    cost = model_cost(preset_shape("llama-3-8b"), "bf16", "bf16")
    w_fit, w_over = Workload(1024, 256, 10), Workload(1024, 256, 40)
    fit = predict(cost, H100, w_fit, max_concurrent_seqs=10, eff=Efficiency())
    over = predict(cost, H100, w_over, max_concurrent_seqs=10, eff=Efficiency())
    assert fit.queue_wait_s == 0 and fit.batch == 10
    assert over.batch == 10
    assert over.output_tokens_per_s == pytest.approx(fit.output_tokens_per_s)
    assert over.tpot_s == pytest.approx(fit.tpot_s)
    # 40 clients, 10 slots: each request waits three service times
    service = fit.ttft_s + (256 - 1) * fit.tpot_s
    assert over.queue_wait_s == pytest.approx(3 * service)
    assert over.ttft_s == pytest.approx(fit.ttft_s + 3 * service)


def test_tp_adds_allreduce_time() -> None:
    shape = preset_shape("llama-3-70b")
    one = decode_step(model_cost(shape, "fp8", "bf16", 1), TABLE.get("h200"), 1, 1000,
                      Efficiency())  # fmt: skip
    eight = decode_step(model_cost(shape, "fp8", "bf16", 8), TABLE.get("h200"), 1, 1000,
                        Efficiency())  # fmt: skip
    assert one.comm_s == 0
    assert eight.comm_s == pytest.approx(160 * 10e-6, rel=0.05)  # latency dominates at batch 1
    assert eight.memory_s < one.memory_s / 7


def test_efficiency_validation() -> None:
    with pytest.raises(PlannerError, match="memory must be in"):
        Efficiency(memory=1.5)
    with pytest.raises(PlannerError, match="input-len"):
        Workload(input_len=0)


def test_batch1_decode_close_to_published() -> None:
    """Llama-3-8B fp16 on one H100 SXM: 6.0 - 7.5 ms/token published (MLC, SGLang, vLLM)."""
    cost = model_cost(preset_shape("llama-3-8b"), "fp16", "bf16")
    figures = predict(cost, H100, Workload(128, 128, 1), 100, Efficiency())
    assert 5.5e-3 < figures.tpot_s < 7.5e-3
