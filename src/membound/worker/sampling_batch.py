"""SamplingBatch: each slot's sampling settings kept as arrays, so a step's SamplingMetadata
is a gather over the sampled slots instead of a loop over SamplingParams.

A request's settings are written into its slot once (when it gets the slot). Per step the
metadata is built with numpy array ops over the sampled slots; the tensors are produced in
a fixed order through ``move`` (a staging copy relies on it). Steps where a sampled request
needs its token history (repetition / presence / frequency penalties, min_tokens, bad words)
or per-token settings (logit_bias, allowed_token_ids, a grammar's bitmask) take the general
``build_sampling_metadata`` for the whole step; both give the same SamplingMetadata.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from membound.layers.attention.metadata import ToDevice
from membound.layers.sampling_metadata import SamplingMetadata, build_sampling_metadata


class SamplingBatch:
    def __init__(
        self,
        max_num_seqs: int,
        vocab_size: int,
        device: torch.device,
        default_generator: torch.Generator | None,
    ) -> None:
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        n = max_num_seqs
        self.vocab_size = vocab_size
        self.device = device
        self.default_generator = default_generator
        self.greedy = np.zeros(n, dtype=np.bool_)
        self.temperature = np.ones(n, dtype=np.float64)
        self.top_k = np.full(n, vocab_size, dtype=np.int64)  # vocab_size = off
        self.top_p = np.ones(n, dtype=np.float64)
        self.min_p = np.zeros(n, dtype=np.float64)
        self.logprobs = np.full(n, -1, dtype=np.int64)  # -1 = not asked
        self.seeded = np.zeros(n, dtype=np.bool_)
        self.needs_history = np.zeros(n, dtype=np.bool_)
        self.generators: list[torch.Generator | None] = [None] * n

    def set(self, slot: int, state: Any) -> None:
        """Write a request's settings (``state``: the runner's RunnerRequestState)."""
        p = state.params
        g = p.greedy
        self.greedy[slot] = g
        self.temperature[slot] = 1.0 if g else float(p.temperature)
        k = p.top_k
        self.top_k[slot] = k if (not g and 0 < k < self.vocab_size) else self.vocab_size
        self.top_p[slot] = 1.0 if g else float(p.top_p)
        self.min_p[slot] = 0.0 if g else float(p.min_p)
        self.logprobs[slot] = -1 if p.logprobs is None else p.logprobs
        self.seeded[slot] = state.generator is not None
        self.generators[slot] = state.generator
        self.needs_history[slot] = (  # what only the general builder handles
            p.repetition_penalty != 1.0
            or p.presence_penalty != 0.0
            or p.frequency_penalty != 0.0
            or p.min_tokens > 0
            or bool(p.logit_bias)
            or p.allowed_token_ids is not None
            or bool(p.bad_words_token_ids)
        )

    def clear(self, slot: int) -> None:
        self.generators[slot] = None

    def general(
        self, req_ids: list[str], states: dict[str, Any],
        token_bitmasks: dict[str, torch.Tensor] | None,
    ) -> SamplingMetadata:
        """The general builder's metadata (rows that need histories, logit bias, bans or an
        allowed-token mask: grammar bitmasks, allowed_token_ids)."""
        rows = [states[r] for r in req_ids]
        masks = [token_bitmasks.get(r) for r in req_ids] if token_bitmasks else None
        return build_sampling_metadata(
            [s.params for s in rows],
            [s.prompt_token_ids for s in rows],
            [s.output_token_ids for s in rows],
            [s.generator for s in rows],
            [s.eos_token_ids for s in rows],
            self.vocab_size,
            self.device,
            self.default_generator,
            masks,
        )

    def needs_general(self, slots: np.ndarray) -> bool:
        return bool(self.needs_history[slots].any())

    def build(self, slots: np.ndarray, move: ToDevice) -> SamplingMetadata:
        """SamplingMetadata for rows = ``slots`` (none of which needs histories)."""
        n = int(slots.shape[0])
        greedy = self.greedy[slots]
        all_greedy = bool(greedy.all())
        is_greedy = move(greedy, torch.bool)
        temperature = None if all_greedy else move(self.temperature[slots], torch.float32)
        ks = self.top_k[slots]
        enabled = ks < self.vocab_size
        top_k = move(ks, torch.int64) if enabled.any() else None
        max_top_k = int(ks[enabled].max()) if top_k is not None else 0
        top_p = self._row_values(self.top_p[slots], 1.0, all_greedy, move)
        min_p = self._row_values(self.min_p[slots], 0.0, all_greedy, move)
        seeded = self.seeded[slots] & ~greedy
        default_idx = np.flatnonzero(~self.seeded[slots] & ~greedy)
        lp = self.logprobs[slots]
        lp_idx = np.flatnonzero(lp >= 0)
        return SamplingMetadata(
            num_rows=n,
            vocab_size=self.vocab_size,
            all_greedy=all_greedy,
            all_random=not bool(greedy.any()),
            is_greedy=is_greedy,
            temperature=temperature,
            top_k=top_k,
            max_top_k=max_top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=None,
            presence_penalty=None,
            frequency_penalty=None,
            prompt_mask=None,
            output_counts=None,
            banned_rows=None,
            banned_token_ids=None,
            bias_rows=None,
            bias_token_ids=None,
            bias_values=None,
            allowed_rows=None,
            allowed_mask=None,
            seeded_rows=[(int(i), self.generators[slots[i]]) for i in np.flatnonzero(seeded)],
            default_rows=move(default_idx, torch.int64) if default_idx.shape[0] else None,
            default_generator=self.default_generator,
            num_logprobs=[None] * n
            if not lp_idx.shape[0]
            else [int(k) if k >= 0 else None for k in lp],
            logprob_rows=move(lp_idx, torch.int64) if lp_idx.shape[0] else None,
            max_num_logprobs=int(lp[lp_idx].max()) if lp_idx.shape[0] else 0,
        )  # type: ignore[arg-type]

    @staticmethod
    def _row_values(
        values: np.ndarray, off: float, all_greedy: bool, move: ToDevice
    ) -> torch.Tensor | None:
        if all_greedy or bool((values == off).all()):
            return None
        return move(values, torch.float32)
