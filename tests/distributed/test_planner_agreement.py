"""The planner and the engine agree on tensor parallelism: which TP degrees a model can be
split over, and the per-GPU KV cache (heads per rank, bytes per token and per block, tokens
a byte budget holds). tests/distributed/test_tp_dense.py checks the same against a running
TP=2 engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from membound.config import CacheConfig, ConfigError, ModelConfig, ParallelConfig, SchedulerConfig
from membound.planner.hardware import GPUSpec
from membound.planner.memory import activation_bytes, plan_memory, valid_tps
from membound.planner.model_cost import model_cost
from membound.planner.model_shape import ModelShape
from membound.planner.workload import EngineLimits, Workload
from membound.worker.kv_cache_alloc import plan_kv_cache
from tiny_models import BASE

CONFIGS = {
    "gqa": {"num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
            "intermediate_size": 14336},
    "mqa": {"num_attention_heads": 16, "num_key_value_heads": 1, "hidden_size": 2048,
            "intermediate_size": 5632},
    "odd_kv": {"num_attention_heads": 24, "num_key_value_heads": 3, "hidden_size": 3072,
               "intermediate_size": 8192},
    "odd_mlp": {"num_attention_heads": 16, "num_key_value_heads": 16, "hidden_size": 2048,
                "intermediate_size": 5460},
    "mixtral": {"architectures": ["MixtralForCausalLM"], "num_attention_heads": 32,
                "num_key_value_heads": 8, "hidden_size": 4096, "intermediate_size": 14336,
                "num_local_experts": 8, "num_experts_per_tok": 2},
    "qwen2_moe": {"architectures": ["Qwen2MoeForCausalLM"], "num_attention_heads": 28,
                  "num_key_value_heads": 4, "hidden_size": 3584, "intermediate_size": 18944,
                  "num_experts": 64, "num_experts_per_tok": 8, "moe_intermediate_size": 2560,
                  "shared_expert_intermediate_size": 20480},
}
GPU = GPUSpec(name="test", display_name="test", memory_bytes=80 << 30, bandwidth_gbs=1000.0,
              dense_bf16_tflops=100.0, max_tp=64)


def raw(name: str) -> dict:
    return {**BASE, "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 4,
            **CONFIGS[name]}


def engine_accepts(cfg: ModelConfig, tp: int) -> bool:
    try:
        ParallelConfig(tp).verify_with_model(cfg)
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_valid_tp_degrees_agree(tmp_path: Path, name: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps(raw(name)))
    cfg, shape = ModelConfig.from_hf(tmp_path), ModelShape.from_file(tmp_path)
    engine = tuple(tp for tp in (1, 2, 4, 8, 16, 32, 64) if engine_accepts(cfg, tp))
    assert valid_tps(shape, GPU) == engine


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("tp", [1, 2, 4, 8, 16])
def test_kv_cache_per_gpu_agrees(tmp_path: Path, name: str, tp: int) -> None:
    (tmp_path / "config.json").write_text(json.dumps(raw(name)))
    cfg, shape = ModelConfig.from_hf(tmp_path), ModelShape.from_file(tmp_path)
    if not engine_accepts(cfg, tp):
        pytest.skip(f"{name} cannot be split {tp} ways")
    budget = 3_000_000_007  # per GPU, deliberately not a whole number of blocks
    sched = SchedulerConfig(max_model_len=4096)
    layout = plan_kv_cache(cfg, CacheConfig(kv_cache_memory_bytes=budget), sched,
                           torch.bfloat16, None, tp)
    cost = model_cost(shape, "bf16", "bf16", tp)
    assert layout.num_kv_heads == cost.kv_heads_per_gpu == -(-cfg.num_key_value_heads // tp)
    assert layout.bytes_per_block == cost.kv_bytes_per_token_per_gpu * layout.block_size
    limits = EngineLimits(gpu_memory_utilization=1.0, runtime_overhead_bytes=0)
    memory = cost.weight_bytes_per_gpu + activation_bytes(cost, limits) + budget
    gpu = GPUSpec(name="t", display_name="t", memory_bytes=memory, bandwidth_gbs=1.0,
                  dense_bf16_tflops=1.0, max_tp=64)
    mem = plan_memory(cost, gpu, Workload(), limits)
    assert mem.kv_budget_bytes == budget
    assert mem.max_kv_tokens == layout.capacity_tokens
