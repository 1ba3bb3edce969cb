"""What the deployment must serve, and the engine limits that shape memory use."""

from __future__ import annotations

from dataclasses import dataclass

from membound.planner.errors import PlannerError

GIB = 1024**3


@dataclass(frozen=True)
class Workload:
    """Requests of ``input_len`` prompt tokens and ``output_len`` generated tokens, with
    ``concurrency`` requests in flight at once (closed loop: a finished request is
    replaced at once). Targets are optional latency limits in seconds."""

    input_len: int = 1024
    output_len: int = 256
    concurrency: int = 1
    target_ttft_s: float | None = None
    target_tpot_s: float | None = None

    def __post_init__(self) -> None:
        for field in ("input_len", "output_len", "concurrency"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise PlannerError(
                    f"{field.replace('_', '-')} must be a positive integer, got {value!r}"
                )
        for field in ("target_ttft_s", "target_tpot_s"):
            value = getattr(self, field)
            if value is not None and not value > 0:
                raise PlannerError(f"{field} must be a positive number of seconds, got {value!r}")

    @property
    def context_len(self) -> int:
        """Tokens one finished sequence holds in the KV cache."""
        return self.input_len + self.output_len

    @property
    def mean_decode_context(self) -> float:
        """Average keys a decode step attends to over the generation."""
        return self.input_len + self.output_len / 2


@dataclass(frozen=True)
class EngineLimits:
    """Memory assumptions (vLLM-style defaults; membound's CacheConfig uses the same)."""

    gpu_memory_utilization: float = 0.9  # share of device memory the engine may use
    runtime_overhead_bytes: int = 1 * GIB  # CUDA context, library workspaces, CUDA graphs
    max_num_batched_tokens: int = 2048  # prefill chunk: sets the activation peak
    sampled_rows: int = 256  # fp32 logits rows held at once
    block_size: int = 16  # KV-cache block: sequences round up to whole blocks

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise PlannerError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        for field in ("max_num_batched_tokens", "sampled_rows", "block_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise PlannerError(f"{field} must be a positive integer, got {value!r}")
        if self.runtime_overhead_bytes < 0:
            raise PlannerError("runtime_overhead_bytes must be >= 0")
