"""EngineArgs: the user-facing engine options (API keywords and CLI flags), turned into a
validated EngineConfig once."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields, replace

import torch

from membound.config import (
    KV_CACHE_DTYPES,
    CacheConfig,
    ConfigError,
    EngineConfig,
    KernelConfig,
    ModelConfig,
    ParallelConfig,
    SchedulerConfig,
    normalize_dtype_name,
    resolve_quantization,
)
from membound.model_source import resolve_model_path


@dataclass
class EngineArgs:
    model: str | None = None
    tokenizer: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    max_model_len: int | None = None
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool = True
    load_format: str = "auto"
    seed: int = 0
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_bytes: int | None = None
    num_kv_blocks: int | None = None
    skip_tokenizer_init: bool = False
    enable_prefix_caching: bool = True
    prefix_cache_salt: str | None = None
    preemption_mode: str = "recompute"
    swap_space: float = 4.0
    cpu_offload_gb: float = 0.0
    kernel_backend: str = "auto"
    enforce_eager: bool = False
    cuda_graph_sizes: list[int] | None = None
    quantization: str | None = None  # None: the checkpoint's; else fp8|int8|int4|awq|gptq|...
    kv_cache_dtype: str = "auto"
    tensor_parallel_size: int = 1  # ranks (GPUs) the model is split over; docs/parallelism.md
    enable_expert_parallel: bool = False  # MoE under TP: whole experts per rank
    distributed_timeout_s: float = 300.0

    def create_engine_config(self) -> EngineConfig:
        path = resolve_model_path(self.model)
        model_config = ModelConfig.from_hf(path)
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
            cache_config=CacheConfig(
                block_size=self.block_size,
                gpu_memory_utilization=self.gpu_memory_utilization,
                kv_cache_memory_bytes=self.kv_cache_memory_bytes,
                num_kv_blocks=self.num_kv_blocks,
                enable_prefix_caching=self.enable_prefix_caching,
                prefix_cache_salt=self.prefix_cache_salt,
                swap_space=self.swap_space,
                kv_cache_dtype=self.kv_cache_dtype,
            ),
            scheduler_config=SchedulerConfig.create(
                max_len, self.max_num_seqs, self.max_num_batched_tokens,
                self.enable_chunked_prefill, self.preemption_mode,
            ),
            tokenizer=self._tokenizer_path(path),
            device=device,
            dtype=dtype,
            load_format=self.load_format,
            seed=self.seed,
            cpu_offload_gb=self.cpu_offload_gb,
            kernel_config=KernelConfig(
                backend=self.kernel_backend,
                enforce_eager=self.enforce_eager,
                cuda_graph_sizes=tuple(self.cuda_graph_sizes) if self.cuda_graph_sizes else None,
            ),
            quantization=quant.method if quant is not None else None,
            parallel_config=ParallelConfig(
                tensor_parallel_size=self.tensor_parallel_size,
                enable_expert_parallel=self.enable_expert_parallel,
                distributed_timeout_s=self.distributed_timeout_s,
            ),
        )

    def _tokenizer_path(self, model_path: str) -> str | None:
        """An explicit tokenizer, else the model folder's; None if it has no tokenizer.json
        (the engine then takes token ids only)."""
        if self.skip_tokenizer_init:
            return None
        if self.tokenizer is not None:
            return resolve_model_path(self.tokenizer)
        has = os.path.isfile(os.path.join(model_path, "tokenizer.json"))
        return model_path if has else None

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser, seed_flag: str = "--seed") -> None:
        g = parser.add_argument_group("engine")
        g.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
        g.add_argument("--dtype", default="auto",
                       help="auto (checkpoint dtype on GPU, float32 on CPU), float32, float16, bfloat16")
        g.add_argument("--device", default="auto", help="auto (cuda when present), cuda, cpu")
        g.add_argument("--max-model-len", type=int, default=None,
                       help="context length limit (default: the model's)")
        g.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
        g.add_argument("--kernel-backend", default="auto",
                       choices=["auto", "cpu", "torch", "triton"],
                       help="auto: Triton kernels on CUDA, the CPU torch kernels elsewhere; "
                            "torch: the simple references (debugging)")
        g.add_argument("--enforce-eager", action="store_true",
                       help="never capture CUDA graphs for decode steps")
        g.add_argument("--cuda-graph-sizes", type=int, nargs="+", default=None,
                       help="decode batch sizes to capture (default 1 2 4 8 16 ... 256)")
        g.add_argument("--max-num-seqs", type=int, default=256, help="sequences per step")
        g.add_argument("--max-num-batched-tokens", type=int, default=None,
                       help="token budget per step (default 2048)")
        g.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction,
                       default=True, help="split long prompts across steps")
        g.add_argument("--load-format", default="auto", choices=["auto", "safetensors", "dummy"],
                       help="'dummy' gives random weights (benchmarks)")
        g.add_argument(seed_flag, dest="seed", type=int, default=0,
                       help="engine seed for unseeded sampling and dummy weights")
        g.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                       help="fraction of GPU memory membound may use")
        g.add_argument("--kv-cache-memory-bytes", type=int, default=None,
                       help="explicit KV cache budget in bytes")
        g.add_argument("--num-kv-blocks", type=int, default=None,
                       help="explicit number of KV blocks (debugging)")
        g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                       default=True, help="reuse the KV of shared prompt prefixes")
        g.add_argument("--prefix-cache-salt", default=None,
                       help="per-deployment salt mixed into block hashes")
        g.add_argument("--preemption-mode", default="recompute", choices=["recompute", "swap"],
                       help="what happens to a request's KV when it is preempted")
        g.add_argument("--swap-space", type=float, default=4.0,
                       help="GiB of CPU memory for swapped-out KV blocks")
        g.add_argument("--quantization", default=None, type=str.lower,
                       choices=["fp8", "int8", "int4", "awq", "gptq", "mxfp4", "nvfp4"],
                       help="weight quantization (default: the checkpoint's own, if any); "
                       "fp8/int8/int4/mxfp4/nvfp4 quantize a float checkpoint while loading")
        g.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES,
                       help="KV cache dtype: auto (the model dtype) or fp8 (E4M3 with per-layer "
                       "K/V scales from the checkpoint, else 1.0: half a bf16 cache)")
        g.add_argument("--cpu-offload-gb", type=float, default=0.0,
                       help="GiB of layer weights kept in CPU memory, streamed to the GPU")
        g.add_argument("--tensor-parallel-size", type=int, default=1,
                       help="split the model over this many GPUs (ranks spawned here, or "
                       "started by torchrun)")
        g.add_argument("--enable-expert-parallel", action="store_true",
                       help="MoE under tensor parallelism: whole experts per rank")
        g.add_argument("--distributed-timeout-s", type=float, default=300.0,
                       help="seconds a tensor-parallel collective may wait on another rank")

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> EngineArgs:
        kwargs = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**kwargs)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but no CUDA GPU is visible; use device='cpu'")
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not supported; use 'auto', 'cuda' or 'cpu'")
    return device


def resolve_dtype(dtype: str, model_config: ModelConfig, device: str) -> str:
    if dtype == "auto":
        return model_config.torch_dtype if device.startswith("cuda") else "float32"
    return normalize_dtype_name(dtype)


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, normalize_dtype_name(name))


