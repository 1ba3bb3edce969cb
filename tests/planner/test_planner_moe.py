"""MoE bytes per decode step, and the planner against published serving figures."""

from __future__ import annotations

import pytest

from membound.planner.audit import Claim, audit_claim
from membound.planner.hardware import HardwareTable
from membound.planner.model_cost import model_cost
from membound.planner.model_shape import ModelShape
from membound.planner.plan import PlanRequest, evaluate
from membound.planner.presets import preset_shape
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


def _per_gpu(model: str, gpu: str, precision: str, tp: int, i: int, o: int, c: int,
             kv: str = "bf16") -> tuple[float, float]:  # fmt: skip
    req = PlanRequest(shape=preset_shape(model), gpus=(TABLE.get(gpu),), precision=precision,
                      kv_dtype=kv, workload=Workload(i, o, c))  # fmt: skip
    option = evaluate(req, TABLE.get(gpu), tp)
    return (option.expected.output_tokens_per_s / tp, option.bound.output_tokens_per_s / tp)


@pytest.mark.parametrize("concurrency", [512, 1024, 4096])
def test_mixtral_fp8_two_h100_within_2x_of_trt_llm(concurrency: int) -> None:
    """TensorRT-LLM: Mixtral-8x7B FP8 on 2 x H100, 128/128, 5,255 output tok/s per GPU."""
    expected, bound = _per_gpu("mixtral-8x7b", "h100", "fp8", 2, 128, 128, concurrency)
    assert 5255 <= expected <= 2 * 5255
    assert bound >= 5255


def test_mixtral_published_figure_is_not_flagged_impossible() -> None:
    claim = Claim(row=2, model="mixtral-8x7b", gpu="h100", precision="fp8", batch_size=512,
                  tokens_per_s=2 * 5255, tp=2, input_len=128, output_len=128)  # fmt: skip
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
