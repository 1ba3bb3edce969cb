"""Model registry keyed by Hugging Face architecture name."""

from __future__ import annotations

from torch import nn

from membound.config import SUPPORTED_ARCHITECTURES, ConfigError, ModelConfig


def model_class(architecture: str) -> type[nn.Module]:
    from membound.models.llama import LlamaForCausalLM

    registry: dict[str, type[nn.Module]] = {
        "LlamaForCausalLM": LlamaForCausalLM,
        "MistralForCausalLM": LlamaForCausalLM,
        "Qwen2ForCausalLM": LlamaForCausalLM,
        "Qwen3ForCausalLM": LlamaForCausalLM,
    }
    if architecture not in registry:
        raise ConfigError(
            f"architecture {architecture!r} is not supported; membound serves "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return registry[architecture]


def build_model(config: ModelConfig, max_positions: int | None = None) -> nn.Module:
    return model_class(config.architecture)(config, max_positions)
