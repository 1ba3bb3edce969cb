"""A dense GQA model at TP=2 (two processes, gloo on CPU): TP=1's greedy tokens and
logprobs (within 1e-4), one KV head per rank, and the planner's per-GPU KV figures equal to
what the engine allocated. One spawned engine serves the whole module (test_tp_models.py
covers the other model shapes, one engine each)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tp_testing import ENGINE, PROMPTS, assert_same_greedy, generate, params

from membound import LLM
from membound.planner.hardware import GPUSpec
from membound.planner.memory import activation_bytes, plan_memory
from membound.planner.model_cost import model_cost
from membound.planner.model_shape import ModelShape
from membound.planner.workload import EngineLimits, Workload
from tiny_models import make_checkpoint


@pytest.fixture(scope="module")
def gqa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("tp") / "gqa", "mistral", seed=11)


@pytest.fixture(scope="module")
def gqa_tp2(gqa: Path):  # type: ignore[no-untyped-def]
    llm = LLM(str(gqa), **ENGINE, tensor_parallel_size=2)
    yield llm
    procs = llm.llm_engine.executor.procs
    llm.shutdown()
    assert procs is not None and [p.exitcode for p in procs.procs.values()] == [0]


def test_dense_gqa_matches_tp1(gqa: Path, gqa_tp2: LLM) -> None:
    ref = generate(gqa)
    assert_same_greedy(ref, gqa_tp2.generate(PROMPTS, params(), use_tqdm=False))
    # a second batch on the same ranks (state of finished requests was dropped everywhere)
    assert_same_greedy(ref[:1], gqa_tp2.generate(PROMPTS[:1], params()[:1], use_tqdm=False))


def test_kv_cache_per_rank_and_planner_agree(gqa: Path, gqa_tp2: LLM) -> None:
    """Rank 0 holds ceil(2 KV heads / 2) = 1 head; the per-rank byte budget buys the number
    of blocks the planner predicts for the same per-GPU KV budget."""
    engine = gqa_tp2.llm_engine
    layout = engine.executor.driver.kv_layout  # rank 0's worker
    assert layout.num_kv_heads == 1 and engine.info.num_blocks == layout.num_blocks
    assert engine.info.tensor_parallel_size == 2
    kv_caches = engine.executor.driver.runner.kv_caches
    assert tuple(kv_caches[0].shape) == (2, layout.num_blocks, 4, 1, 16)
    cost = model_cost(ModelShape.from_file(gqa), "bf16", "fp32", tp=2)  # fp32 KV, as here
    assert cost.kv_heads_per_gpu == layout.num_kv_heads
    assert cost.kv_bytes_per_token_per_gpu * layout.block_size == layout.bytes_per_block
    # a GPU whose memory leaves exactly the engine's per-rank KV budget after weights and
    # activations: the planner's KV capacity is the engine's block count
    budget = ENGINE["kv_cache_memory_bytes"]
    limits = EngineLimits(gpu_memory_utilization=1.0, runtime_overhead_bytes=0,
                          block_size=layout.block_size)
    memory = cost.weight_bytes_per_gpu + activation_bytes(cost, limits) + budget
    gpu = GPUSpec(name="test", display_name="test", memory_bytes=memory, bandwidth_gbs=1.0,
                  dense_bf16_tflops=1.0)
    mem = plan_memory(cost, gpu, Workload(input_len=16, output_len=16), limits)
    assert mem.kv_budget_bytes == budget and mem.fits
    assert mem.max_kv_tokens == layout.capacity_tokens
