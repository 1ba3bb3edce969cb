"""EngineArgs: the user-facing engine options (API keywords and CLI flags), turned into a
validated EngineConfig once."""

from __future__ import annotations

import argparse
import logging
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from membound.config import (
    QUANTIZATION_METHODS,
    CacheConfig,
    ConfigError,
    EngineConfig,
    KernelConfig,
    ModelConfig,
    ParallelConfig,
    SchedulerConfig,
    normalize_dtype_name,
    read_generation_defaults,
    resolve_quantization,
)
from membound.config.options import add_option, option, option_dest, options
from membound.model_source import is_gguf_path, read_model_config, resolve_model_path

_CONFIGS = (CacheConfig, SchedulerConfig, KernelConfig, ParallelConfig, EngineConfig)

logger = logging.getLogger(__name__)


@dataclass
class EngineArgs:
    """The engine options as users pass them. A field without ``option(...)`` mirrors the
    config field of the same name (or ``dest``): its default is read from that config class
    and its flag, help and choices come from that field's metadata; the fields that carry
    their own ``option`` mean something else before they are resolved (``None``: the
    model's value, ``"auto"``: pick one)."""

    model: str | None = None
    tokenizer: str | None = option(None, "tokenizer folder", default_text="the model's")
    dtype: str = option(
        "auto", "auto (the checkpoint dtype on GPU; on CPU bfloat16 with AVX512-BF16 or AMX, else "
        "float32), float32, float16, bfloat16")
    device: str = option("auto", "auto (cuda when present), cuda, cpu")
    max_model_len: int | None = option(None, "context length limit", default_text="the model's")
    block_size: int = CacheConfig.block_size
    max_num_seqs: int = SchedulerConfig.max_num_seqs
    max_num_batched_tokens: int | None = option(
        None, "token budget per step", default_text=f"{SchedulerConfig.max_num_batched_tokens}"
        ", or --max-model-len when larger and chunked prefill is off")
    enable_chunked_prefill: bool = SchedulerConfig.enable_chunked_prefill
    load_format: str = EngineConfig.load_format
    seed: int = EngineConfig.seed
    gpu_memory_utilization: float = CacheConfig.gpu_memory_utilization
    kv_cache_memory_bytes: int | None = CacheConfig.kv_cache_memory_bytes
    num_kv_blocks: int | None = CacheConfig.num_kv_blocks
    skip_tokenizer_init: bool = option(
        False, "load no tokenizer (the engine then takes token ids only)", cli=False)
    enable_prefix_caching: bool = CacheConfig.enable_prefix_caching
    prefix_cache_salt: str | None = CacheConfig.prefix_cache_salt
    preemption_mode: str = SchedulerConfig.preemption_mode
    swap_space: float = CacheConfig.swap_space
    cpu_offload_gb: float = EngineConfig.cpu_offload_gb
    kernel_backend: str = KernelConfig.backend
    enforce_eager: bool = KernelConfig.enforce_eager
    cuda_graph_sizes: Sequence[int] | None = KernelConfig.cuda_graph_sizes
    quantization: str | None = option(
        None, "weight quantization; fp8/int8/int4/mxfp4/nvfp4 quantize a float checkpoint "
        "while loading", choices=QUANTIZATION_METHODS, type=str.lower,
        default_text="the checkpoint's own, if any")
    kv_cache_dtype: str = CacheConfig.kv_cache_dtype
    tensor_parallel_size: int = ParallelConfig.tensor_parallel_size
    enable_expert_parallel: bool = ParallelConfig.enable_expert_parallel
    distributed_timeout_s: float = ParallelConfig.distributed_timeout_s
    generation_config: str = EngineConfig.generation_config
    trust_remote_code: bool = option(
        False, "refused: membound runs only its own model code, never a checkpoint's")

    def create_engine_config(self) -> EngineConfig:
        if self.trust_remote_code:
            raise ConfigError(
                "trust_remote_code is not supported: membound never runs code shipped with a "
                "checkpoint, only its own implementations of the supported architectures; drop "
                "--trust-remote-code (the architecture must be one membound supports)"
            )
        path = resolve_model_path(self.model)
        model_config = read_model_config(
            path, gguf_dequantize=self.load_format == "gguf_dequantized",
            gguf_tokenizer=not self.skip_tokenizer_init and self.tokenizer is None,
        )
        quant = resolve_quantization(model_config.quantization, self.quantization)
        model_config = replace(model_config, quantization=quant)
        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, model_config, device)
        max_len = self.max_model_len or model_config.max_supported_len
        if max_len > model_config.max_supported_len:
            raise ConfigError(
                f"max_model_len={max_len} is longer than the model supports "
                f"({model_config.max_supported_len} positions); lower max_model_len"
            )
        return EngineConfig(
            model=path,
            model_config=model_config,
            cache_config=CacheConfig(**self._config_values(CacheConfig)),
            scheduler_config=SchedulerConfig.create(
                max_len, self.max_num_batched_tokens, **self._config_values(SchedulerConfig)
            ),
            tokenizer=self._tokenizer_path(path),
            device=device,
            dtype=dtype,
            kernel_config=KernelConfig(**self._config_values(KernelConfig)),
            quantization=quant.method if quant is not None else None,
            parallel_config=ParallelConfig(**self._config_values(ParallelConfig)),
            **self._config_values(EngineConfig),
        )

    def _config_values(self, cls: type) -> dict[str, Any]:
        """The mirrored fields of config class ``cls``, by the config's field names."""
        own = _own_options()
        out = {}
        for f, opt in options(cls):
            name = option_dest(f, opt)
            if name not in own:
                value = getattr(self, name)
                out[f.name] = tuple(value) if isinstance(value, list) else value
        return out

    def _tokenizer_path(self, model_path: str) -> str | None:
        """An explicit tokenizer, else the model folder's; None if it has no tokenizer.json
        (the engine then takes token ids only)."""
        if self.skip_tokenizer_init:
            return None
        if self.tokenizer is not None:
            return resolve_model_path(self.tokenizer)
        if is_gguf_path(model_path):
            return model_path  # its tokenizer was checked with its config
        has = os.path.isfile(os.path.join(model_path, "tokenizer.json"))
        return model_path if has else None

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser, seed_flag: str = "--seed") -> None:
        """One flag per option, derived from the fields (see config/options.py)."""
        g = parser.add_argument_group("engine")
        for f, opt, source in _all_options():
            if opt.cli:
                add_option(g, f, opt, typing.get_type_hints(source),
                           flag=seed_flag if f.name == "seed" else None,
                           default=getattr(EngineArgs, option_dest(f, opt)))

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> EngineArgs:
        kwargs = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**kwargs)


def _own_options() -> dict[str, Any]:
    """EngineArgs fields that carry their own option (they do not mirror a config field)."""
    return {f.name: f for f, _ in options(EngineArgs)}


def _all_options() -> list[tuple[Any, Any, type]]:
    """(field, Option, class declaring it) for every engine option, in EngineArgs' order."""
    by_name: dict[str, tuple[Any, Any, type]] = {}
    for cls in _CONFIGS:
        for f, opt in options(cls):
            by_name[option_dest(f, opt)] = (f, opt, cls)
    for f, opt in options(EngineArgs):
        by_name[f.name] = (f, opt, EngineArgs)
    return [by_name[f.name] for f in fields(EngineArgs) if f.name in by_name]


def generation_defaults(config: EngineConfig) -> dict[str, Any]:
    """Default sampling parameters per ``config.generation_config``: ``auto`` reads the
    model's generation_config.json, ``vllm`` none (SamplingParams' own), a folder its file."""
    source = config.generation_config
    if source == "vllm":
        return {}
    folder = config.model if source == "auto" else os.path.expanduser(source)
    return read_generation_defaults(folder)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but no CUDA GPU is visible; use device='cpu'")
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not supported; use 'auto', 'cuda' or 'cpu'")
    return device


def resolve_dtype(dtype: str, model_config: ModelConfig, device: str) -> str:
    """"auto": the checkpoint's dtype on a GPU; on a CPU bfloat16 where it multiplies bf16
    natively (AVX512-BF16 / AMX), else float32 (kernels/cpu_features.py)."""
    if dtype != "auto":
        return normalize_dtype_name(dtype)
    if device.startswith("cuda"):
        return model_config.torch_dtype
    from membound.kernels.cpu_features import default_cpu_dtype, detect_cpu_features

    features = detect_cpu_features()
    chosen = default_cpu_dtype(features)
    logger.info("dtype auto on this CPU (%s): %s", features.describe(), chosen)
    return chosen


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, normalize_dtype_name(name))


