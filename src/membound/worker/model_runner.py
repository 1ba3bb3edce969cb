"""ModelRunner: SchedulerOutput -> tensors -> forward -> sample -> ModelRunnerOutput.

Under tensor parallelism every rank runs the same steps (the forward pass and each
``compute_logits`` call are collectives); only rank 0 gets logits back, so only rank 0
samples and fills its ModelRunnerOutput. The other ranks return an empty one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from membound.core.outputs import (
    ModelRunnerOutput,
    NewRequestData,
    ScheduledChunk,
    SchedulerOutput,
)
from membound.kernels.contract import KernelOps
from membound.layers.attention.metadata import AttentionMetadata
from membound.layers.sampler import Sampler, prompt_logprobs
from membound.layers.sampling_metadata import make_generator
from membound.sampling_params import SamplingParams
from membound.worker.cuda_graph import CUDAGraphRunner
from membound.worker.input_batch import InputBatch, StepInputs
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
    """Complete when constructed: the model built on ``ops``, its KV cache, the swap space
    (None without swap preemption) and the captured decode graphs (None: eager)."""

    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[torch.Tensor],
        ops: KernelOps,
        *,
        block_size: int,
        vocab_size: int,
        device: torch.device,
        sliding_window: int | None,
        seed: int,
        max_num_seqs: int,
        max_model_len: int,
        swap_space: KVSwapSpace | None = None,
        cuda_graphs: CUDAGraphRunner | None = None,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.ops = ops
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.device = device
        self.sliding_window = sliding_window
        self.max_model_len = max_model_len
        self.sampler = Sampler(ops)
        self.states: dict[str, RunnerRequestState] = {}
        self.kv_swap = swap_space
        self.cuda_graphs = cuda_graphs
        self.input_batch = InputBatch(
            max_num_seqs, max_model_len, block_size, vocab_size, device, sliding_window,
            make_generator(seed, device),
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

    def prepare_inputs(
        self, sched: SchedulerOutput, token_bitmasks: dict[str, torch.Tensor] | None = None
    ) -> StepInputs:
        """The step's device-ready inputs, and the backend's per-step decode metadata."""
        for new in sched.new_requests:
            self._add_request(new)
        inputs = self.input_batch.prepare(sched, self.states, token_bitmasks)
        d = inputs.attn.decode
        if d is not None and self.kv_caches:  # the backend's decode metadata: once a step
            inputs.attn.backend_decode = self.ops.plan_decode(
                block_tables=d.block_tables, seq_lens=d.seq_lens, block_size=self.block_size,
                sliding_window=self.sliding_window, kv_cache=self.kv_caches[0],
            )
        return inputs

    @torch.inference_mode()
    def execute(
        self, sched: SchedulerOutput, token_bitmasks: dict[str, torch.Tensor] | None = None
    ) -> ModelRunnerOutput:
        """One step; ``token_bitmasks`` maps a request id to its packed allowed-token bitmask
        (structured outputs; see build_sampling_metadata), on the rank that samples."""
        for rid in sched.finished_req_ids:
            self.states.pop(rid, None)
        if self.kv_swap is not None:  # before the forward pass overwrites freed blocks
            self.kv_swap.swap_out(sched.blocks_to_swap_out)
            self.kv_swap.swap_in(sched.blocks_to_swap_in)
        inputs = self.prepare_inputs(sched, token_bitmasks)
        out = ModelRunnerOutput()
        if not sched.chunks:
            return out
        hidden = self._forward(inputs.input_ids, inputs.positions, inputs.attn)
        self._prompt_logprobs(sched, hidden, inputs.query_start_loc, out)
        self._sample(sched, hidden, inputs, out)
        return out

    def warm_up(self, num_tokens: int, num_seqs: int, num_blocks: int) -> int:
        """Run the serving path once at its largest step before any request: one prefill
        step of about ``num_tokens`` tokens shared by up to ``num_seqs`` dummy requests, one
        decode step of all of them, then drop them. Returns how many requests it ran (0: a
        cache too small for one).

        The first real steps then find their activations' memory already mapped, the
        kernels' code generated and the thread pools started: without it a fresh process's
        first offline round ran ~12% slower on the CPU (docs/benchmarks.md, run 9). The
        dummy K/V land in blocks nobody holds (the block pool hands every block out as
        free; a block's contents are written before they are read), and greedy sampling
        draws nothing from the seeded generators. Every tensor-parallel rank runs the same
        steps, as for a real request."""
        n = max(1, min(num_seqs, num_tokens))
        t = max(1, min(num_tokens // n, self.max_model_len - 1))
        per_req = -(-(t + 1) // self.block_size)  # blocks for the prompt and one decode
        n = min(n, num_blocks // per_req)
        if n == 0:
            return 0
        params = SamplingParams(temperature=0.0, max_tokens=2)
        ids = [f"warm-up-{i}" for i in range(n)]
        tables = [list(range(i * per_req, (i + 1) * per_req)) for i in range(n)]
        prompt = [j % self.vocab_size for j in range(t)]
        self.execute(SchedulerOutput(
            new_requests=[NewRequestData(r, prompt, params, ()) for r in ids],
            chunks=[ScheduledChunk(r, prompt, 0, tb, True) for r, tb in zip(ids, tables)],
        ))  # fmt: skip
        self.execute(SchedulerOutput(
            chunks=[ScheduledChunk(r, [0], t, tb, True) for r, tb in zip(ids, tables)],
        ))  # fmt: skip
        self.execute(SchedulerOutput(finished_req_ids=set(ids)))
        return n

    def _sample(
        self, sched: SchedulerOutput, hidden: torch.Tensor, inputs: StepInputs,
        out: ModelRunnerOutput,
    ) -> None:
        if inputs.sample_token_idx is None:
            return
        assert inputs.sampling is not None
        logits = self.model.compute_logits(hidden[inputs.sample_token_idx])  # [rows, vocab]
        if logits is None:  # a tensor-parallel rank other than 0: rank 0 samples
            return
        result = self.sampler(logits, inputs.sampling)
        chunks = sched.chunks
        for j, i in enumerate(inputs.sample_rows.tolist()):
            rid = chunks[i].req_id
            token = result.sampled_token_ids[j]
            self.states[rid].output_token_ids.append(token)
            out.sampled_token_ids[rid] = token
            if result.logprobs[j] is not None:
                out.logprobs[rid] = result.logprobs[j]  # type: ignore[assignment]

    def _prompt_logprobs(
        self, sched: SchedulerOutput, hidden: torch.Tensor, qsl: np.ndarray,
        out: ModelRunnerOutput,
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
                offset = int(qsl[i]) - s
                logits = self.model.compute_logits(hidden[lo - 1 + offset : hi - 1 + offset])
                state.prompt_logprobs_done = hi
                if logits is None:  # not rank 0
                    continue
                targets = torch.tensor(state.prompt_token_ids[lo:hi], device=self.device)
                entries.extend(prompt_logprobs(logits, targets, k, vocab_size=self.vocab_size))
            if entries:
                out.prompt_logprobs[chunk.req_id] = entries
