"""Fit decisions, KV capacity, smallest TP, CPU offload."""

from __future__ import annotations

import pytest

from membound.planner.errors import PlannerError
from membound.planner.hardware import GIB, HardwareTable
from membound.planner.memory import check_tp, plan_memory, smallest_tp, valid_tps
from membound.planner.model_cost import model_cost
from membound.planner.presets import preset_shape
from membound.planner.workload import EngineLimits, Workload

TABLE = HardwareTable()
WORKLOAD = Workload(input_len=1024, output_len=256)
LIMITS = EngineLimits()


def plan(model: str, gpu: str, precision: str, tp: int, kv: str = "bf16"):  # noqa: ANN201
    cost = model_cost(preset_shape(model), precision, kv, tp)
    return plan_memory(cost, TABLE.get(gpu), WORKLOAD, LIMITS)


def test_70b_bf16_does_not_fit_one_h100() -> None:
    mem = plan("llama-2-70b", "h100", "bf16", 1)
    assert not mem.fits
    assert mem.max_kv_tokens == 0 and mem.max_concurrent_seqs == 0
    assert "weights need" in mem.reason
    assert mem.cpu_offload_bytes > 50 * GIB


@pytest.mark.parametrize("model", ["llama-2-70b", "llama-3-70b"])
def test_70b_bf16_fits_two_h100_at_tp2_with_little_kv_room(model: str) -> None:
    mem = plan(model, "h100", "bf16", 2)
    assert mem.fits and mem.cpu_offload_bytes == 0
    assert 0 < mem.kv_budget_bytes < 8 * GIB  # little room
    assert 10_000 < mem.max_kv_tokens < 50_000
    assert (
        smallest_tp(preset_shape(model), TABLE.get("h100"), "bf16", "bf16", WORKLOAD, LIMITS) == 2
    )


def test_70b_fp8_fits_one_h200() -> None:
    mem = plan("llama-3-70b", "h200", "fp8", 1)
    assert mem.fits and mem.max_concurrent_seqs > 100


def test_falcon_180b_int4_awq_fits_one_h200() -> None:
    assert plan("falcon-180b", "h200", "int4-awq", 1).fits
    assert not plan("falcon-180b", "h200", "bf16", 1).fits
    assert plan("falcon-180b", "h200", "bf16", 4).fits


def test_more_sensible_fits() -> None:
    assert plan("llama-3-8b", "l40s", "bf16", 1).fits
    assert not plan("llama-3-8b", "tpu-v5e", "bf16", 1).fits
    assert plan("mixtral-8x7b", "h100", "bf16", 2).fits
    assert not plan("mixtral-8x7b", "h100", "bf16", 1).fits
    assert plan("mixtral-8x7b", "h200", "bf16", 1).fits


def test_kv_capacity_arithmetic() -> None:
    mem = plan("llama-3-8b", "h100", "bf16", 1)
    assert mem.kv_bytes_per_token_per_gpu == 131_072
    # whole 16-token blocks, as the engine allocates them (tests/distributed: they agree)
    assert mem.max_kv_tokens == mem.kv_budget_bytes // (16 * 131_072) * 16
    assert mem.kv_bytes_per_seq == 1280 * 131_072  # 1024 + 256 is a whole number of blocks
    assert mem.max_concurrent_seqs == mem.kv_budget_bytes // mem.kv_bytes_per_seq
    fp8 = plan("llama-3-8b", "h100", "bf16", 1, kv="fp8")
    assert fp8.max_kv_tokens == pytest.approx(2 * mem.max_kv_tokens, abs=16)


def test_kv_capacity_stops_growing_past_kv_heads() -> None:
    """Qwen2.5-7B has 4 KV heads: TP 4 -> 7 adds GPUs but no KV tokens per GPU... at
    TP > kv_heads each GPU still holds one head of every token."""
    cost4 = model_cost(preset_shape("llama-2-70b"), "bf16", "bf16", 8)
    cost8 = model_cost(preset_shape("falcon-180b"), "bf16", "bf16", 8)
    assert cost4.kv_heads_per_gpu == cost8.kv_heads_per_gpu == 1
    shape = preset_shape("qwen2.5-7b")
    per_gpu = {tp: model_cost(shape, "bf16", "bf16", tp).kv_bytes_per_token_per_gpu
               for tp in (1, 2, 4, 7)}  # fmt: skip
    assert per_gpu[1] == 4 * per_gpu[4] and per_gpu[4] == per_gpu[7]


def test_offload_when_kv_of_one_sequence_does_not_fit() -> None:
    long = Workload(input_len=600_000, output_len=1000)
    cost = model_cost(preset_shape("llama-3-8b"), "bf16", "bf16", 1)
    mem = plan_memory(cost, TABLE.get("h100"), long, LIMITS)
    assert not mem.fits and "cannot hold the KV" in mem.reason
    assert mem.cpu_offload_bytes == mem.kv_bytes_per_seq - mem.kv_budget_bytes


def test_valid_and_invalid_tp() -> None:
    qwen = preset_shape("qwen2.5-7b")  # 28 heads: TP 8 does not divide them
    assert valid_tps(qwen, TABLE.get("h100")) == (1, 2, 4)
    with pytest.raises(PlannerError, match="does not divide .* 28 attention heads"):
        check_tp(qwen, TABLE.get("h100"), 8)
    with pytest.raises(PlannerError, match="multi-node"):
        check_tp(preset_shape("llama-3-8b"), TABLE.get("h100"), 16)


def test_nothing_fits_gives_none() -> None:
    shape = preset_shape("falcon-180b")
    assert smallest_tp(shape, TABLE.get("tpu-v5e"), "bf16", "bf16", WORKLOAD, LIMITS) is None
