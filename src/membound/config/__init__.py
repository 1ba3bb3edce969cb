"""Frozen, validated configuration objects.

This package is the ONLY place that reads Hugging Face ``config.json`` quirks (``model.py``,
and ``quantization.py`` for ``quantization_config``); everything downstream reads plain,
already-validated fields. Values derived at run time (the number of KV blocks, say) never
get patched into these objects. Pure Python, no torch. Module map (each imports only the
ones above it):

  errors.py        ConfigError, normalize_dtype_name
  options.py       option() field metadata (default, choices, help) and the argparse flags
                   derived from it (stdlib only)
  quantization.py  QuantizationConfig, resolve_quantization, QUANTIZATION_METHODS and the
                   parsers of each checkpoint's ``quantization_config`` layout
  model.py         ModelConfig.from_hf / from_dict / from_gguf, RopeScaling, MoEConfig,
                   SUPPORTED_ARCHITECTURES, read_generation_defaults
  gguf.py          GGUF metadata and tensor table -> ModelConfig fields (from_gguf)
  engine.py        CacheConfig, SchedulerConfig, KernelConfig, ParallelConfig
                   (check_tensor_parallel), EngineConfig

Import from ``membound.config``; the names below are its public surface.
"""

from membound.config.engine import (
    KV_CACHE_DTYPES,
    CacheConfig,
    EngineConfig,
    KernelConfig,
    ParallelConfig,
    SchedulerConfig,
    check_tensor_parallel,
)
from membound.config.errors import ConfigError, normalize_dtype_name
from membound.config.model import (
    SUPPORTED_ARCHITECTURES,
    ModelConfig,
    MoEConfig,
    RopeScaling,
    read_generation_defaults,
)
from membound.config.quantization import (
    QUANTIZATION_METHODS,
    QuantizationConfig,
    resolve_quantization,
)

__all__ = [
    "KV_CACHE_DTYPES",
    "QUANTIZATION_METHODS",
    "SUPPORTED_ARCHITECTURES",
    "CacheConfig",
    "ConfigError",
    "EngineConfig",
    "KernelConfig",
    "ModelConfig",
    "MoEConfig",
    "ParallelConfig",
    "QuantizationConfig",
    "RopeScaling",
    "SchedulerConfig",
    "check_tensor_parallel",
    "normalize_dtype_name",
    "read_generation_defaults",
    "resolve_quantization",
]
