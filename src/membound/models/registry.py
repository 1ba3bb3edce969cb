"""Model registry keyed by Hugging Face architecture name."""

from __future__ import annotations

from torch import nn

from membound.config import SUPPORTED_ARCHITECTURES, ConfigError, ModelConfig
from membound.distributed.context import ParallelContext
from membound.kernels.contract import KernelOps


def model_class(architecture: str) -> type[nn.Module]:
    from membound.models.llama import LlamaForCausalLM
    from membound.models.mixtral import MixtralForCausalLM
    from membound.models.qwen_moe import QwenMoeForCausalLM

    registry: dict[str, type[nn.Module]] = {
        "LlamaForCausalLM": LlamaForCausalLM,
        "MistralForCausalLM": LlamaForCausalLM,
        "Qwen2ForCausalLM": LlamaForCausalLM,
        "Qwen3ForCausalLM": LlamaForCausalLM,
        "MixtralForCausalLM": MixtralForCausalLM,
        "Qwen2MoeForCausalLM": QwenMoeForCausalLM,
        "Qwen3MoeForCausalLM": QwenMoeForCausalLM,
    }
    if architecture not in registry:
        raise ConfigError(
            f"architecture {architecture!r} is not supported; membound serves "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return registry[architecture]


def build_model(
    config: ModelConfig,
    max_positions: int | None = None,
    parallel: ParallelContext | None = None,
    expert_parallel: bool = False,
    ops: KernelOps | None = None,
) -> nn.Module:
    """The model for ``config`` with every layer built on ``ops`` (None: the references);
    under tensor parallelism, this rank's shard of it."""
    return model_class(config.architecture)(  # type: ignore[call-arg]
        config, max_positions, parallel, expert_parallel, ops
    )
