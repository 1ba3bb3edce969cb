"""Sampler: penalised, filtered, per-row-seeded sampling of the next token, plus logprobs.

Pipeline for one step (vLLM's order), vectorised over the batch:

    raw logprobs (rows that ask)   <- log_softmax(raw logits)
    logit_bias                                    (+bias)
    min_tokens: ban EOS / stop_token_ids; bad_words (-inf)
    grammar / allowed_token_ids: keep only allowed tokens (-inf elsewhere)
    penalties: repetition (prompt + output), presence and frequency (output only)
    greedy rows                    <- argmax of the penalised logits
    temperature -> min_p -> top_k / top_p filtering (on the temperature-scaled logits)
    random rows                    <- argmax(probs / Exponential(1) noise)

The exponential race samples exactly from ``probs``. Each seeded row draws its noise from its
own ``torch.Generator`` (vocab_size draws per step), so its tokens do not depend on what else
is in the batch; other random rows share one default generator.

The caller's logits are never modified: the sampler works on one float32 copy of the first
``vocab_size`` columns (padded vocab columns are dropped and so never sampled). The stage
functions below (``apply_*``) modify their ``logits`` argument in place and return it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from membound.kernels.contract import TORCH_OPS, KernelOps
from membound.layers.sampling_metadata import (
    SamplingMetadata,
    build_sampling_metadata,
    make_generator,
    token_counts,
)

__all__ = [
    "Sampler",
    "SamplerOutput",
    "SamplingMetadata",
    "apply_allowed_tokens",
    "apply_logit_bias",
    "apply_min_p",
    "apply_min_tokens",
    "apply_penalties",
    "apply_temperature",
    "apply_top_k_top_p",
    "build_sampling_metadata",
    "exponential_race",
    "make_generator",
    "prompt_logprobs",
    "sample",
    "token_counts",
]

_NEG_INF = float("-inf")


@dataclass(slots=True)
class SamplerOutput:
    """One step's sampled tokens, in row order."""

    sampled_token_ids: list[int]
    # Per row: {token_id: logprob} for the sampled token then the top-k; None if not asked.
    logprobs: list[dict[int, float] | None]
    # Per row: rank of the sampled token in the raw distribution (1 = best); None if not asked.
    ranks: list[int | None]


class Sampler(nn.Module):
    """Stateless: everything per step comes in through ``SamplingMetadata``; greedy rows'
    argmax is the kernel backend's (``ops``)."""

    def __init__(self, ops: KernelOps | None = None) -> None:
        super().__init__()
        self.ops: KernelOps = ops or TORCH_OPS

    def forward(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        """``logits`` [num_rows, >= vocab_size], any float dtype; returns one token per row."""
        logits = _prepare_logits(logits, metadata)  # [num_rows, vocab_size] float32
        raw_logprobs = _raw_logprobs(logits, metadata)
        logits = apply_logit_bias(logits, metadata)
        logits = apply_min_tokens(logits, metadata)
        logits = apply_allowed_tokens(logits, metadata)
        logits = apply_penalties(logits, metadata)
        sampled = sample(logits, metadata, self.ops)  # [num_rows] int64
        return _build_output(sampled, raw_logprobs, metadata)


def _prepare_logits(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    if logits.dim() != 2 or logits.shape[0] != md.num_rows or logits.shape[1] < md.vocab_size:
        raise ValueError(
            f"logits shape {tuple(logits.shape)} does not fit num_rows={md.num_rows}, "
            f"vocab_size={md.vocab_size}"
        )
    view = logits[:, : md.vocab_size]
    read_only = md.all_greedy and not md.modifies_logits
    if read_only:
        # Fast path: pure argmax, nothing is written, so no copy (casting keeps the order).
        return view
    return view.to(torch.float32, copy=True)


def _raw_logprobs(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor | None:
    """[num_logprob_rows, vocab_size] log_softmax of the raw logits (a new tensor)."""
    if md.logprob_rows is None:
        return None
    rows = logits if md.logprob_rows.numel() == md.num_rows else logits[md.logprob_rows]
    return rows.float().log_softmax(dim=-1)


def apply_logit_bias(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """Add each row's logit_bias to its tokens."""
    if md.bias_rows is not None and md.bias_token_ids is not None and md.bias_values is not None:
        logits.index_put_((md.bias_rows, md.bias_token_ids), md.bias_values, accumulate=True)
    return logits


def apply_allowed_tokens(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """-inf on every token a row's grammar (or allowed_token_ids) does not allow now."""
    if md.allowed_rows is not None and md.allowed_mask is not None:
        if md.allowed_rows.numel() == md.num_rows:  # every row masked: in place, no gather
            return logits.masked_fill_(~md.allowed_mask, _NEG_INF)
        rows = logits[md.allowed_rows]  # [num_masked, vocab_size] (a copy)
        logits[md.allowed_rows] = rows.masked_fill_(~md.allowed_mask, _NEG_INF)
    return logits


def apply_min_tokens(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """Ban EOS and stop_token_ids on rows below min_tokens, and bad words' next tokens."""
    if md.banned_rows is not None and md.banned_token_ids is not None:
        logits[md.banned_rows, md.banned_token_ids] = _NEG_INF
    return logits


def apply_penalties(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """Repetition penalty (HF/vLLM) then presence and frequency penalties (OpenAI).

    repetition: for tokens seen in prompt or output, logit / p if logit > 0 else logit * p.
    presence/frequency: logit -= frequency * count_in_output + presence * (count > 0).
    """
    counts = md.output_counts  # [num_rows, vocab_size]
    if counts is None:
        return logits
    if md.repetition_penalty is not None and md.prompt_mask is not None:
        seen = md.prompt_mask | (counts > 0)
        penalty = torch.where(seen, md.repetition_penalty.unsqueeze(1), 1.0)
        logits = torch.where(logits > 0, logits / penalty, logits * penalty)
    if md.frequency_penalty is not None and md.presence_penalty is not None:
        logits -= md.frequency_penalty.unsqueeze(1) * counts
        logits -= md.presence_penalty.unsqueeze(1) * (counts > 0).float()
    return logits


def sample(logits: torch.Tensor, md: SamplingMetadata, ops: KernelOps = TORCH_OPS
           ) -> torch.Tensor:  # fmt: skip
    """[num_rows] int64 token ids from penalised logits (greedy rows: exact argmax, the first
    of equal maxima)."""
    if md.all_greedy:
        return ops.argmax_rows(x=logits)
    greedy_ids = None if md.all_random else ops.argmax_rows(x=logits)
    assert md.temperature is not None
    logits = apply_temperature(logits, md.temperature)
    if md.min_p is not None:
        logits = apply_min_p(logits, md.min_p)
    logits = apply_top_k_top_p(logits, md.top_k, md.max_top_k, md.top_p)
    probs = logits.softmax(dim=-1)
    random_ids = exponential_race(probs, md)
    if greedy_ids is None:
        return random_ids
    return torch.where(md.is_greedy, greedy_ids, random_ids)


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """logits / T per row (greedy rows carry T = 1)."""
    return logits.div_(temperature.unsqueeze(1))


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p * (the row's top probability)."""
    probs = logits.softmax(dim=-1)
    threshold = min_p.unsqueeze(1) * probs.amax(dim=-1, keepdim=True)  # [num_rows, 1]
    return logits.masked_fill_(probs < threshold, _NEG_INF)


def apply_top_k_top_p(
    logits: torch.Tensor,
    top_k: torch.Tensor | None,
    max_top_k: int,
    top_p: torch.Tensor | None,
) -> torch.Tensor:
    """Keep each row's top_k logits (ties at the k-th value kept), then its top_p mass.

    top_k holds vocab_size on rows where it is off; top_p holds 1.0 where it is off. Top-p
    keeps the smallest set of most likely tokens whose probability reaches p (always >= 1).
    """
    if top_p is None:
        if top_k is None:
            return logits
        return _apply_top_k_only(logits, top_k, max_top_k)
    sorted_logits, order = logits.sort(dim=-1, descending=False)  # ascending
    vocab = logits.shape[1]
    if top_k is not None:
        kth_index = (vocab - top_k).unsqueeze(1)  # [num_rows, 1]
        kth = sorted_logits.gather(1, kth_index)
        sorted_logits.masked_fill_(sorted_logits < kth, _NEG_INF)
    cum = sorted_logits.softmax(dim=-1).cumsum_(dim=-1)  # mass of this token and smaller ones
    drop = cum <= (1.0 - top_p).unsqueeze(1)
    drop[:, -1] = False  # the most likely token always survives
    sorted_logits.masked_fill_(drop, _NEG_INF)
    return logits.scatter_(1, order, sorted_logits)


def _apply_top_k_only(logits: torch.Tensor, top_k: torch.Tensor, max_top_k: int) -> torch.Tensor:
    """Top-k via one topk(max_top_k) instead of a full sort."""
    vocab = logits.shape[1]
    top_values = logits.topk(max_top_k, dim=-1).values  # [num_rows, max_top_k], descending
    kth_index = (top_k.clamp(max=max_top_k) - 1).unsqueeze(1)
    kth = top_values.gather(1, kth_index)  # [num_rows, 1]
    kth = kth.masked_fill((top_k >= vocab).unsqueeze(1), _NEG_INF)  # rows with top-k off
    return logits.masked_fill_(logits < kth, _NEG_INF)


def exponential_race(probs: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """argmax(probs / q), q ~ Exponential(1): an exact sample from each row of ``probs``.

    Seeded rows draw their vocab_size noise values from their own generator; the other
    random rows from ``md.default_generator``. Greedy rows get q = 1 (their result is unused).
    """
    if md.all_random and not md.seeded_rows:
        noise = torch.empty_like(probs).exponential_(generator=md.default_generator)
    else:
        noise = torch.ones_like(probs)
        if md.default_rows is not None:
            shape = (md.default_rows.numel(), probs.shape[1])
            drawn = torch.empty(shape, dtype=probs.dtype, device=probs.device)
            noise[md.default_rows] = drawn.exponential_(generator=md.default_generator)
        for row, generator in md.seeded_rows:
            noise[row].exponential_(generator=generator)
    # Guard against q == 0 (0 / 0 = nan would win the argmax on a filtered token).
    noise.clamp_(min=torch.finfo(noise.dtype).tiny)
    return probs.div_(noise).argmax(dim=-1)


def _build_output(
    sampled: torch.Tensor, raw_logprobs: torch.Tensor | None, md: SamplingMetadata
) -> SamplerOutput:
    token_ids: list[int] = sampled.tolist()
    logprobs: list[dict[int, float] | None] = [None] * md.num_rows
    ranks: list[int | None] = [None] * md.num_rows
    if raw_logprobs is None or md.logprob_rows is None:
        return SamplerOutput(token_ids, logprobs, ranks)
    rows: list[int] = md.logprob_rows.tolist()
    chosen = sampled[md.logprob_rows] if len(rows) != md.num_rows else sampled
    dicts, row_ranks = _logprob_dicts(raw_logprobs, chosen, [md.num_logprobs[r] or 0 for r in rows])
    for row, d, rank in zip(rows, dicts, row_ranks, strict=True):
        logprobs[row] = d
        ranks[row] = rank
    return SamplerOutput(token_ids, logprobs, ranks)


def _logprob_dicts(
    logprobs: torch.Tensor, token_ids: torch.Tensor, ks: list[int]
) -> tuple[list[dict[int, float]], list[int]]:
    """Per row: {token: logprob, then the row's top-k}, and the token's rank (1 = best)."""
    token_lp = logprobs.gather(1, token_ids.long().unsqueeze(1))  # [n, 1]
    ranks: list[int] = ((logprobs > token_lp).sum(dim=-1) + 1).tolist()
    max_k = min(max(ks, default=0), logprobs.shape[1])
    top_lp: list[list[float]] = [[] for _ in ks]
    top_ids: list[list[int]] = [[] for _ in ks]
    if max_k > 0:
        values, indices = logprobs.topk(max_k, dim=-1)  # [n, max_k]
        top_lp, top_ids = values.tolist(), indices.tolist()
    out: list[dict[int, float]] = []
    for tok, lp, k, ids, lps in zip(
        token_ids.tolist(), token_lp.squeeze(1).tolist(), ks, top_ids, top_lp, strict=True
    ):
        d = {tok: lp}
        for t, v in zip(ids[:k], lps[:k], strict=True):
            d.setdefault(t, v)
        out.append(d)
    return out, ranks


def prompt_logprobs(
    logits: torch.Tensor,
    target_token_ids: torch.Tensor,
    k: int,
    *,
    vocab_size: int | None = None,
) -> list[dict[int, float]]:
    """Per prompt position: {next prompt token: logprob, then the top-k alternatives}.

    ``logits`` [n, vocab] for n prompt positions, ``target_token_ids`` [n] the prompt token
    that follows each position. Columns >= ``vocab_size`` (padding) are dropped if given.
    """
    if logits.dim() != 2 or target_token_ids.shape != (logits.shape[0],):
        raise ValueError(
            f"logits {tuple(logits.shape)} and target_token_ids "
            f"{tuple(target_token_ids.shape)} must be [n, vocab] and [n]"
        )
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if vocab_size is not None:
        logits = logits[:, :vocab_size]
    logprobs = logits.float().log_softmax(dim=-1)  # [n, vocab]
    targets = target_token_ids.to(device=logprobs.device, dtype=torch.int64)
    dicts, _ = _logprob_dicts(logprobs, targets, [k] * logits.shape[0])
    return dicts
