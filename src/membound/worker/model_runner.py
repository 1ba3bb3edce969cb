"""ModelRunner: SchedulerOutput -> tensors -> forward -> sample -> ModelRunnerOutput.

Under tensor parallelism every rank runs the same steps (the forward pass and each
``compute_logits`` call are collectives); only rank 0 gets logits back, so only rank 0
samples and fills its ModelRunnerOutput. The other ranks return an empty one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from membound.config import KernelConfig
from membound.core.outputs import ModelRunnerOutput, NewRequestData, SchedulerOutput
from membound.layers.attention.backend import (
    KernelBackend,
    install_kernel_backend,
    select_kernel_backend,
)
from membound.layers.attention.metadata import AttentionMetadata, build_attention_metadata
from membound.layers.sampler import Sampler, build_sampling_metadata, prompt_logprobs
from membound.layers.sampling_metadata import make_generator
from membound.sampling_params import SamplingParams
from membound.worker.cuda_graph import CUDAGraphRunner, maybe_capture_decode_graphs
from membound.worker.kv_swap import KVSwapSpace


@dataclass(slots=True)
class RunnerRequestState:
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: tuple[int, ...]
    generator: torch.Generator | None
    output_token_ids: list[int] = field(default_factory=list)
    prompt_logprobs_done: int = 0  # prompt positions whose logprobs were already returned


class ModelRunner:
    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[torch.Tensor],
        block_size: int,
        vocab_size: int,
        device: torch.device,
        sliding_window: int | None,
        seed: int,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.device = device
        self.sliding_window = sliding_window
        self.sampler = Sampler()
        self.default_generator = make_generator(seed, device)
        self.states: dict[str, RunnerRequestState] = {}
        self.swap_space: KVSwapSpace | None = None  # set by the engine for swap preemption
        self.kernel_backend = KernelBackend.TORCH  # until init_data_plane picks one
        self.cuda_graphs: CUDAGraphRunner | None = None

    def init_data_plane(self, config: KernelConfig, max_num_seqs: int, max_model_len: int) -> None:
        """Start-up, once: pick the kernel backend, install it into the model's layers, and
        capture decode CUDA graphs where they apply (CUDA + Triton, not enforce_eager)."""
        self.kernel_backend = select_kernel_backend(self.device, config.backend)
        install_kernel_backend(self.model, self.kernel_backend)
        self.cuda_graphs = maybe_capture_decode_graphs(
            self.model, self.kv_caches, config, self.kernel_backend, max_num_seqs,
            max_model_len, self.block_size, self.sliding_window, self.device,
        )

    def _forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata
    ) -> torch.Tensor:
        """[num_tokens, hidden]: a CUDA graph replay for pure decode steps, else eager."""
        if self.cuda_graphs is not None and self.cuda_graphs.can_run(md):
            return self.cuda_graphs.run(input_ids, positions, md)
        return self.model(input_ids, positions, self.kv_caches, md)

    def _add_request(self, new: NewRequestData) -> None:
        seed = new.sampling_params.seed
        gen = make_generator(seed, self.device) if seed is not None else None
        self.states[new.req_id] = RunnerRequestState(
            new.prompt_token_ids, new.sampling_params, new.eos_token_ids, gen
        )

    @torch.inference_mode()
    def execute(
        self, sched: SchedulerOutput, token_bitmasks: dict[str, torch.Tensor] | None = None
    ) -> ModelRunnerOutput:
        """One step; ``token_bitmasks`` maps a request id to its packed allowed-token bitmask
        (structured outputs; see build_sampling_metadata), on the rank that samples."""
        for rid in sched.finished_req_ids:
            self.states.pop(rid, None)
        for new in sched.new_requests:
            self._add_request(new)
        if self.swap_space is not None:  # before the forward pass overwrites freed blocks
            self.swap_space.swap_out(sched.blocks_to_swap_out)
            self.swap_space.swap_in(sched.blocks_to_swap_in)
        out = ModelRunnerOutput()
        if not sched.chunks:
            return out
        chunks = sched.chunks
        input_ids = torch.tensor(
            [t for c in chunks for t in c.token_ids], dtype=torch.int64, device=self.device
        )
        positions = torch.cat(
            [torch.arange(c.num_computed_tokens, c.num_computed_tokens + len(c.token_ids))
             for c in chunks]
        ).to(self.device)
        query_lens = [len(c.token_ids) for c in chunks]
        seq_lens = [c.num_computed_tokens + len(c.token_ids) for c in chunks]
        md = build_attention_metadata(
            query_lens, seq_lens, [c.block_table for c in chunks], self.block_size,
            self.device, self.sliding_window,
        )
        hidden = self._forward(input_ids, positions, md)  # [num_tokens, hidden]
        self._prompt_logprobs(sched, hidden, md.query_start_loc, out)
        self._sample(sched, hidden, md.query_start_loc, out, token_bitmasks or {})
        return out

    def _sample(
        self, sched: SchedulerOutput, hidden: torch.Tensor, qsl: list[int], out: ModelRunnerOutput,
        token_bitmasks: dict[str, torch.Tensor],
    ) -> None:
        rows = [i for i, c in enumerate(sched.chunks) if c.sample]
        if not rows:
            return
        last = torch.tensor([qsl[i + 1] - 1 for i in rows], device=self.device)
        logits = self.model.compute_logits(hidden[last])  # [num_rows, vocab]
        if logits is None:  # a tensor-parallel rank other than 0: rank 0 samples
            return
        states = [self.states[sched.chunks[i].req_id] for i in rows]
        md = build_sampling_metadata(
            [s.params for s in states],
            [s.prompt_token_ids for s in states],
            [s.output_token_ids for s in states],
            [s.generator for s in states],
            [s.eos_token_ids for s in states],
            self.vocab_size,
            self.device,
            self.default_generator,
            [token_bitmasks.get(sched.chunks[i].req_id) for i in rows] if token_bitmasks else None,
        )
        result = self.sampler(logits, md)
        for j, i in enumerate(rows):
            rid = sched.chunks[i].req_id
            token = result.sampled_token_ids[j]
            states[j].output_token_ids.append(token)
            out.sampled_token_ids[rid] = token
            if result.logprobs[j] is not None:
                out.logprobs[rid] = result.logprobs[j]  # type: ignore[assignment]

    def _prompt_logprobs(
        self, sched: SchedulerOutput, hidden: torch.Tensor, qsl: list[int], out: ModelRunnerOutput
    ) -> None:
        """Logprobs of each prompt token given the ones before it, for requests that asked.

        Entry j of a request's list belongs to prompt token j (entry 0 is None); it comes from
        the logits at position j - 1. A chunk over positions [s, s + n) yields entries
        s + 1 .. s + n that are < the prompt length; entries returned before a preemption
        are not repeated when the prompt is recomputed."""
        for i, chunk in enumerate(sched.chunks):
            state = self.states[chunk.req_id]
            k = state.params.prompt_logprobs
            if k is None:
                continue
            s, n = chunk.num_computed_tokens, len(chunk.token_ids)
            entries: list[dict[int, float] | None] = []
            if state.prompt_logprobs_done == 0 and s == 0:
                entries.append(None)
                state.prompt_logprobs_done = 1
            lo = max(state.prompt_logprobs_done, s + 1)
            hi = min(s + n + 1, len(state.prompt_token_ids))
            if hi > lo:
                offset = qsl[i] - s
                logits = self.model.compute_logits(hidden[lo - 1 + offset : hi - 1 + offset])
                state.prompt_logprobs_done = hi
                if logits is None:  # not rank 0
                    continue
                targets = torch.tensor(state.prompt_token_ids[lo:hi], device=self.device)
                entries.extend(prompt_logprobs(logits, targets, k, vocab_size=self.vocab_size))
            if entries:
                out.prompt_logprobs[chunk.req_id] = entries
