"""The only objects that cross between the control plane and the workers."""

from __future__ import annotations

from dataclasses import dataclass, field

from membound.sampling_params import SamplingParams


@dataclass(slots=True)
class NewRequestData:
    """Sent the first time a request is scheduled; the runner keeps it until it finishes."""

    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: tuple[int, ...]


@dataclass(slots=True)
class ScheduledChunk:
    """Tokens of one request to run this step.

    Positions num_computed_tokens .. num_computed_tokens + len(token_ids) - 1 of the
    request; ``sample`` is True when the chunk reaches the end of the known tokens, so the
    step yields the request's next token.
    """

    req_id: str
    token_ids: list[int]
    num_computed_tokens: int
    block_table: list[int]
    sample: bool

    @property
    def num_scheduled_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(slots=True)
class SchedulerOutput:
    new_requests: list[NewRequestData] = field(default_factory=list)
    chunks: list[ScheduledChunk] = field(default_factory=list)
    finished_req_ids: set[str] = field(default_factory=set)
    preempted_req_ids: set[str] = field(default_factory=set)
    # KV copies the worker makes before the forward pass: (gpu block, cpu block) to save,
    # then (cpu block, gpu block) to restore. A step never does both (see Scheduler).
    blocks_to_swap_out: list[tuple[int, int]] = field(default_factory=list)
    blocks_to_swap_in: list[tuple[int, int]] = field(default_factory=list)

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks and not self.blocks_to_swap_out and not self.blocks_to_swap_in


@dataclass(slots=True)
class ModelRunnerOutput:
    sampled_token_ids: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, dict[int, float]] = field(default_factory=dict)
    # per request, entries for the prompt positions computed this step (None for position 0)
    prompt_logprobs: dict[str, list[dict[int, float] | None]] = field(default_factory=dict)


@dataclass(slots=True)
class EngineCoreOutput:
    """What one step produced for one request."""

    req_id: str
    new_token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None
    logprobs: list[dict[int, float]] = field(default_factory=list)
    prompt_logprobs: list[dict[int, float] | None] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
