"""ParallelConfig: validated once, errors that name the values; the API and CLI options."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from membound.config import ConfigError, ModelConfig, ParallelConfig, QuantizationConfig
from membound.engine.engine_args import EngineArgs
from tiny_models import BASE, make_checkpoint


def model(arch: str = "LlamaForCausalLM", **kw: object) -> ModelConfig:
    return ModelConfig.from_dict({**BASE, "architectures": [arch], **kw})


def test_own_fields() -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ConfigError, match="tensor_parallel_size must be a positive integer"):
            ParallelConfig(tensor_parallel_size=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="distributed_timeout_s"):
        ParallelConfig(distributed_timeout_s=0)


@pytest.mark.parametrize(("tp", "kw", "error"), [
    (3, {}, "tensor_parallel_size=3 must divide num_attention_heads=4"),
    (2, {"num_attention_heads": 6, "num_key_value_heads": 3, "head_dim": 16},
     "must divide num_key_value_heads=3 or be a multiple of it"),
    (4, {"num_attention_heads": 12, "num_key_value_heads": 3, "head_dim": 16},
     "num_key_value_heads=3"),
    (4, {"intermediate_size": 110}, "tensor_parallel_size=4 must divide intermediate_size=110"),
    (4, {"num_key_value_heads": 1}, None),  # one KV head, replicated on all 4 ranks
    (4, {"num_key_value_heads": 2}, None),  # each KV head on 2 ranks
    (2, {}, None),
])
def test_sharding_rules(tp: int, kw: dict, error: str | None) -> None:
    cfg = model(**kw)
    if error is None:
        ParallelConfig(tp).verify_with_model(cfg)
    else:
        with pytest.raises(ConfigError, match=error):
            ParallelConfig(tp).verify_with_model(cfg)


def test_moe_rules() -> None:
    moe = {"num_experts": 3, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
    qwen3 = model("Qwen3MoeForCausalLM", **moe)
    ParallelConfig(2).verify_with_model(qwen3)  # experts sliced: 32 / 2
    with pytest.raises(ConfigError, match=r"must divide num_experts \(expert parallel\)=3"):
        ParallelConfig(2, enable_expert_parallel=True).verify_with_model(qwen3)
    with pytest.raises(ConfigError, match="moe_intermediate_size=33"):
        ParallelConfig(2).verify_with_model(model("Qwen3MoeForCausalLM", **{
            **moe, "moe_intermediate_size": 33}))
    with pytest.raises(ConfigError, match="enable_expert_parallel needs a Mixture-of-Experts"):
        ParallelConfig(1, enable_expert_parallel=True).verify_with_model(model())


def test_quantized_models_are_refused_clearly() -> None:
    cfg = model(quantization_config={"quant_method": "fp8"})
    assert isinstance(cfg.quantization, QuantizationConfig)
    ParallelConfig(1).verify_with_model(cfg)
    with pytest.raises(ConfigError, match=r"tensor parallelism of quantized models \(fp8\) is "
                                          "not supported yet"):
        ParallelConfig(2).verify_with_model(cfg)


def test_engine_args_and_cli(tmp_path: Path) -> None:
    folder = make_checkpoint(tmp_path / "m", "mistral", seed=0)
    parser = argparse.ArgumentParser()
    EngineArgs.add_cli_args(parser)
    ns = parser.parse_args(["--tensor-parallel-size", "2", "--distributed-timeout-s", "30"])
    args = EngineArgs.from_cli_args(ns)
    assert (args.tensor_parallel_size, args.enable_expert_parallel) == (2, False)
    args.model = str(folder)
    pc = args.create_engine_config().parallel_config
    assert (pc.tensor_parallel_size, pc.distributed_timeout_s) == (2, 30.0)
    with pytest.raises(ConfigError, match="must divide num_attention_heads=4"):
        EngineArgs(model=str(folder), tensor_parallel_size=8).create_engine_config()
    with pytest.raises(ConfigError, match="quantized models \\(int8\\)"):
        EngineArgs(model=str(folder), tensor_parallel_size=2,
                   quantization="int8").create_engine_config()
