"""Engine-side configuration: CacheConfig, SchedulerConfig, KernelConfig, ParallelConfig
(with check_tensor_parallel, the TP rule the planner asks too) and EngineConfig, which
validates them together with a ModelConfig.

Values derived at run time (the number of KV blocks, say) never get patched into
these objects; they live in their own objects (see ``worker/kv_cache_alloc.py``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from membound.config.errors import ConfigError, normalize_dtype_name
from membound.config.model import ModelConfig
from membound.config.options import option

# kv_cache_dtype values: "auto" stores K/V in the model dtype; "fp8" (alias "fp8_e4m3")
# stores E4M3 with a per-layer scale for K and for V (kernels/kv_quant.py)
KV_CACHE_DTYPES: tuple[str, ...] = ("auto", "fp8", "fp8_e4m3")


@dataclass(frozen=True)
class CacheConfig:
    """Paged KV cache shape and budget."""

    block_size: int = option(16, "tokens per KV block")
    gpu_memory_utilization: float = option(0.9, "fraction of GPU memory membound may use")
    kv_cache_memory_bytes: int | None = option(
        None, "explicit KV cache budget in bytes (overrides --gpu-memory-utilization)")
    num_kv_blocks: int | None = option(None, "explicit number of KV blocks (debugging)")
    cpu_kv_cache_default_bytes: int = 2 * 1024**3
    enable_prefix_caching: bool = option(True, "reuse the KV of shared prompt prefixes")
    prefix_cache_salt: str | None = option(
        None, "per-deployment salt mixed into block hashes")
    swap_space: float = option(
        4.0, "GiB of CPU memory for swapped-out KV blocks (--preemption-mode swap)")
    kv_cache_dtype: str = option(
        "auto", "KV cache dtype: auto (the model dtype) or fp8 (E4M3 with per-layer K/V "
        "scales from the checkpoint, else 1.0: half a bf16 cache)", choices=KV_CACHE_DTYPES)

    def __post_init__(self) -> None:
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            hint = (" (E5M2 is not supported: its 2 mantissa bits lose too much; use 'fp8', "
                    "E4M3)" if self.kv_cache_dtype.lower() == "fp8_e5m2" else "")
            raise ConfigError(
                f"kv_cache_dtype={self.kv_cache_dtype!r} is not one of "
                f"{', '.join(KV_CACHE_DTYPES)}{hint}"
            )
        if not isinstance(self.block_size, int) or self.block_size <= 0:
            raise ConfigError(f"block_size must be a positive integer, got {self.block_size!r}")
        if not (0.0 < self.gpu_memory_utilization <= 1.0):
            raise ConfigError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes <= 0:
            raise ConfigError(
                f"kv_cache_memory_bytes must be positive, got {self.kv_cache_memory_bytes}"
            )
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ConfigError(f"num_kv_blocks must be at least 1, got {self.num_kv_blocks}")
        if not (self.swap_space >= 0 and math.isfinite(self.swap_space)):
            raise ConfigError(f"swap_space must be a number of GiB >= 0, got {self.swap_space}")

    @property
    def fp8_kv_cache(self) -> bool:
        """K/V stored as E4M3 with per-layer scales."""
        return self.kv_cache_dtype in ("fp8", "fp8_e4m3")


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous-batching limits."""

    max_model_len: int
    max_num_seqs: int = option(256, "sequences per step")
    max_num_batched_tokens: int = option(2048, "token budget per step")
    enable_chunked_prefill: bool = option(True, "split long prompts across steps")
    preemption_mode: str = option(
        "recompute", "what happens to a request's KV when it is preempted",
        choices=("recompute", "swap"))

    def __post_init__(self) -> None:
        if self.preemption_mode not in ("recompute", "swap"):
            raise ConfigError(
                f"preemption_mode must be 'recompute' or 'swap', got {self.preemption_mode!r}"
            )
        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ConfigError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) is smaller than "
                f"max_model_len ({self.max_model_len}) with chunked prefill disabled, so long "
                "prompts could never be scheduled; raise max_num_batched_tokens or enable "
                "chunked prefill"
            )

    @classmethod
    def create(
        cls,
        max_model_len: int,
        max_num_batched_tokens: int | None = None,
        **kwargs: object,
    ) -> SchedulerConfig:
        """``max_num_batched_tokens=None``: the field's default, or ``max_model_len`` when that
        is larger and chunked prefill is off (a whole prompt must fit one step)."""
        if max_num_batched_tokens is None:
            budget = cls.max_num_batched_tokens
            chunked = kwargs.get("enable_chunked_prefill", cls.enable_chunked_prefill)
            max_num_batched_tokens = budget if chunked else max(budget, max_model_len)
        return cls(max_model_len, max_num_batched_tokens=max_num_batched_tokens, **kwargs)


@dataclass(frozen=True)
class KernelConfig:
    """Data plane: which kernels run, and CUDA graphs for decode steps."""

    backend: str = option(
        "auto", "auto: Triton kernels on CUDA, the CPU torch kernels elsewhere; torch: the "
        "plain references (debugging)", choices=("auto", "cpu", "torch", "triton"),
        dest="kernel_backend")
    enforce_eager: bool = option(False, "never capture CUDA graphs for decode steps")
    cuda_graph_sizes: tuple[int, ...] | None = option(
        None, "decode batch sizes captured as CUDA graphs",
        default_text="1 2 4 8 16 ... 256, at most --max-num-seqs")

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "cpu", "torch", "triton"):
            raise ConfigError(
                f"kernel backend {self.backend!r} is not supported; use 'auto', 'cpu', 'torch' "
                "or 'triton'"
            )
        if self.cuda_graph_sizes is None:
            return
        sizes = tuple(self.cuda_graph_sizes)
        bad = [s for s in sizes if not isinstance(s, int) or isinstance(s, bool) or s < 1]
        if bad or not sizes:
            raise ConfigError(
                f"cuda_graph_sizes must be positive integers, got {list(self.cuda_graph_sizes)}"
            )
        object.__setattr__(self, "cuda_graph_sizes", tuple(sorted(set(sizes))))


def check_tensor_parallel(
    tp: int, num_attention_heads: int, num_key_value_heads: int, widths: dict[str, int]
) -> None:
    """Raise a ConfigError naming the value ``tp`` ranks cannot split evenly: attention heads;
    KV heads (or, once TP exceeds them, TP must be a multiple of them: each is then replicated
    on TP / KV heads ranks); and each MLP width in ``widths``. The planner asks the same."""
    if num_attention_heads % tp:
        raise ConfigError(
            f"tensor_parallel_size={tp} must divide num_attention_heads={num_attention_heads}"
        )
    kv = num_key_value_heads
    if (tp <= kv and kv % tp) or (tp > kv and tp % kv):
        raise ConfigError(
            f"tensor_parallel_size={tp} must divide num_key_value_heads={kv} or be a multiple "
            "of it (KV heads are then replicated)"
        )
    for name, value in widths.items():
        if value % tp:
            raise ConfigError(f"tensor_parallel_size={tp} must divide {name}={value}")


@dataclass(frozen=True)
class ParallelConfig:
    """Tensor parallelism (and expert parallelism under it). See docs/parallelism.md.

    ``distributed_timeout_s`` bounds every collective of a step (a rank that hangs makes the
    others fail after it); a rank that dies is noticed at once (its sockets close).
    """

    tensor_parallel_size: int = option(
        1, "split the model over this many GPUs (ranks spawned here, or started by torchrun)",
        aliases=("-tp",))
    enable_expert_parallel: bool = option(
        False, "MoE under tensor parallelism: whole experts per rank instead of slices")
    distributed_timeout_s: float = option(
        300.0, "seconds a tensor-parallel collective may wait on another rank")

    def __post_init__(self) -> None:
        tp = self.tensor_parallel_size
        if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
            raise ConfigError(f"tensor_parallel_size must be a positive integer, got {tp!r}")
        if not (self.distributed_timeout_s > 0 and math.isfinite(self.distributed_timeout_s)):
            raise ConfigError(
                f"distributed_timeout_s must be a positive number, got {self.distributed_timeout_s}"
            )

    def verify_with_model(self, model: ModelConfig) -> None:
        """Raise a ConfigError naming the values when ``model`` cannot be split this way."""
        tp = self.tensor_parallel_size
        moe = model.moe
        if self.enable_expert_parallel and moe is None:
            raise ConfigError(
                f"enable_expert_parallel needs a Mixture-of-Experts model; {model.architecture} "
                "is dense"
            )
        if tp == 1:
            return
        widths = {"intermediate_size": model.intermediate_size}
        if moe is not None:
            if len(moe.moe_layers) == model.num_hidden_layers:
                widths = {}  # no dense MLP anywhere
            if moe.shared_expert_intermediate_size:
                widths["shared_expert_intermediate_size"] = moe.shared_expert_intermediate_size
            if self.enable_expert_parallel:
                widths["num_experts (expert parallel)"] = moe.num_experts
            else:
                widths["moe_intermediate_size"] = moe.moe_intermediate_size
        check_tensor_parallel(tp, model.num_attention_heads, model.num_key_value_heads, widths)
        if model.quantization is not None:
            raise ConfigError(
                f"tensor parallelism of quantized models ({model.quantization.method}) is not "
                "supported yet; run the float checkpoint with tensor_parallel_size > 1 (a GGUF "
                "file: load_format='gguf_dequantized'), or the quantized one with "
                "tensor_parallel_size=1"
            )


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs, validated together."""

    model: str
    model_config: ModelConfig
    cache_config: CacheConfig
    scheduler_config: SchedulerConfig
    tokenizer: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    load_format: str = option(
        "auto", "'dummy' gives random weights (benchmarks); 'gguf_dequantized' loads every "
        "tensor of a .gguf file dense at --dtype (exact comparisons)",
        choices=("auto", "safetensors", "dummy", "gguf_dequantized"))
    seed: int = option(0, "engine seed for unseeded sampling and dummy weights")
    cpu_offload_gb: float = option(
        0.0, "GiB of layer weights kept in CPU memory, streamed to the GPU")
    kernel_config: KernelConfig = field(default_factory=KernelConfig)
    quantization: str | None = None  # the method running (model_config.quantization's)
    parallel_config: ParallelConfig = field(default_factory=ParallelConfig)
    generation_config: str = option(
        "auto", "default sampling parameters: auto (the checkpoint's generation_config.json), "
        "vllm (membound's own defaults), or a folder holding a generation_config.json",
        metavar="auto|vllm|DIR")

    def __post_init__(self) -> None:
        self.parallel_config.verify_with_model(self.model_config)
        mq = self.model_config.quantization
        if self.quantization is None and mq is not None:
            object.__setattr__(self, "quantization", mq.method)
        if self.quantization != (mq.method if mq is not None else None):
            raise ConfigError(
                f"quantization={self.quantization!r} does not match the model config's "
                f"({mq.method if mq else None!r}); build the model config with "
                "resolve_quantization (EngineArgs does)"
            )
        if not (self.cpu_offload_gb >= 0 and math.isfinite(self.cpu_offload_gb)):
            raise ConfigError(f"cpu_offload_gb must be >= 0, got {self.cpu_offload_gb}")
        if self.load_format not in ("auto", "safetensors", "dummy", "gguf_dequantized"):
            raise ConfigError(
                f"load_format {self.load_format!r} is not supported; use 'auto', "
                "'safetensors', 'dummy' (random weights) or 'gguf_dequantized' (a .gguf file "
                "loaded dense)"
            )
        normalize_dtype_name(self.dtype)
        gen = self.generation_config
        if gen not in ("auto", "vllm") and not os.path.isdir(os.path.expanduser(gen)):
            raise ConfigError(
                f"generation_config={gen!r} is neither 'auto', 'vllm' nor an existing folder; "
                "pass auto (the checkpoint's generation_config.json), vllm (membound's "
                "defaults) or a folder that holds a generation_config.json"
            )
        if self.scheduler_config.max_model_len > self.model_config.max_supported_len:
            raise ConfigError(
                f"max_model_len={self.scheduler_config.max_model_len} is longer than the model's "
                f"max_position_embeddings ({self.model_config.max_supported_len}); lower "
                "max_model_len"
            )
