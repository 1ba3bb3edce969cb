"""SamplingMetadata: one step's per-row sampling settings as tensors on the logits' device.

Built once per step by the model runner from the scheduled requests' ``SamplingParams`` and
token histories; consumed by ``Sampler``. Every optional field is ``None`` when no row in the
batch needs it, so the sampler skips that stage entirely (the common all-defaults batch does
no penalty, filtering or logprob work at all).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from membound.sampling_params import SamplingParams


@dataclass(slots=True)
class SamplingMetadata:
    """Per-step sampling state for ``num_rows`` rows (one row per sampled token)."""

    num_rows: int
    vocab_size: int  # tokenizer vocab; logits columns >= vocab_size are padding, never sampled
    all_greedy: bool
    all_random: bool
    is_greedy: torch.Tensor  # [num_rows] bool
    # [num_rows] float32, 1.0 on greedy rows; None when every row is greedy.
    temperature: torch.Tensor | None
    # [num_rows] int64 in [1, vocab_size]; vocab_size means "off". None when no row uses it.
    top_k: torch.Tensor | None
    max_top_k: int  # largest enabled top_k (0 when top_k is None)
    top_p: torch.Tensor | None  # [num_rows] float32, 1.0 means off
    min_p: torch.Tensor | None  # [num_rows] float32, 0.0 means off
    repetition_penalty: torch.Tensor | None  # [num_rows] float32, 1.0 means off
    presence_penalty: torch.Tensor | None  # [num_rows] float32, 0.0 means off
    frequency_penalty: torch.Tensor | None  # [num_rows] float32, 0.0 means off
    prompt_mask: torch.Tensor | None  # [num_rows, vocab_size] bool; set with repetition_penalty
    output_counts: torch.Tensor | None  # [num_rows, vocab_size] float32; set with any penalty
    # min_tokens and bad_words: logits[banned_rows[j], banned_token_ids[j]] = -inf.
    banned_rows: torch.Tensor | None  # [num_banned] int64
    banned_token_ids: torch.Tensor | None  # [num_banned] int64
    # logit_bias: logits[bias_rows[j], bias_token_ids[j]] += bias_values[j].
    bias_rows: torch.Tensor | None  # [num_biased] int64
    bias_token_ids: torch.Tensor | None  # [num_biased] int64
    bias_values: torch.Tensor | None  # [num_biased] float32
    # grammar (structured outputs) and allowed_token_ids: on row allowed_rows[j], only the
    # tokens where allowed_mask[j] is True may be sampled.
    allowed_rows: torch.Tensor | None  # [num_masked] int64
    allowed_mask: torch.Tensor | None  # [num_masked, vocab_size] bool
    # Random (non-greedy) rows with their own generator: (row, generator).
    seeded_rows: list[tuple[int, torch.Generator]]
    # Random rows drawing from default_generator; None when there are none.
    default_rows: torch.Tensor | None  # [num_default] int64
    default_generator: torch.Generator | None  # None -> torch's global RNG
    num_logprobs: list[int | None]  # per row, None = not asked
    logprob_rows: torch.Tensor | None  # [num_logprob_rows] int64, rows with logprobs set
    max_num_logprobs: int

    @property
    def needs_penalties(self) -> bool:
        return self.output_counts is not None

    @property
    def modifies_logits(self) -> bool:
        """True when some stage writes the logits before sampling (greedy needs a copy)."""
        return (self.banned_rows is not None or self.needs_penalties
                or self.bias_rows is not None or self.allowed_rows is not None)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator for one seeded request (must live on the logits' device)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def build_sampling_metadata(
    params: list[SamplingParams],
    prompt_token_ids: list[list[int]],
    output_token_ids: list[list[int]],
    generators: list[torch.Generator | None],
    eos_token_ids: list[tuple[int, ...]],
    vocab_size: int,
    device: torch.device,
    default_generator: torch.Generator | None = None,
    token_bitmasks: Sequence[torch.Tensor | None] | None = None,
) -> SamplingMetadata:
    """Turn per-request settings and histories into batched tensors on ``device``.

    ``generators[i]`` is row i's own generator (from its seed) or None for the shared
    ``default_generator`` (None: torch's global RNG). Generators must be on ``device``.
    ``eos_token_ids[i]`` and the request's ``stop_token_ids`` are banned while row i has
    fewer than ``min_tokens`` output tokens, whether or not ``ignore_eos`` is set.
    ``token_bitmasks[i]`` (structured outputs) is row i's packed allowed-token bitmask, int32
    [ceil(vocab_size / 32)] with bit ``t % 32`` of word ``t // 32`` set when token t is allowed
    (xgrammar's layout), or None for an unconstrained row.
    """
    _check_lengths(params, prompt_token_ids, output_token_ids, generators, eos_token_ids)
    if token_bitmasks is not None and len(token_bitmasks) != len(params):
        raise ValueError(f"token_bitmasks has {len(token_bitmasks)} rows but params has "
                         f"{len(params)}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    n = len(params)
    greedy = [p.greedy for p in params]
    all_greedy = all(greedy)

    def row_values(attr: str, off: float) -> torch.Tensor | None:
        """Per-row float tensor, ``off`` on greedy rows; None if no row differs from ``off``."""
        values = [
            off if g else float(getattr(p, attr)) for p, g in zip(params, greedy, strict=True)
        ]
        if all_greedy or all(v == off for v in values):
            return None
        return torch.tensor(values, dtype=torch.float32, device=device)

    temperature = None
    if not all_greedy:
        temps = [1.0 if g else float(p.temperature) for p, g in zip(params, greedy, strict=True)]
        temperature = torch.tensor(temps, dtype=torch.float32, device=device)
    top_k, max_top_k = _top_k(params, greedy, vocab_size, device)
    rep, pres, freq, prompt_mask, output_counts = _penalties(
        params, prompt_token_ids, output_token_ids, vocab_size, device
    )
    banned_rows, banned_ids = _bans(params, output_token_ids, eos_token_ids, vocab_size, device)
    bias_rows, bias_ids, bias_values = _logit_bias(params, vocab_size, device)
    allowed_rows, allowed_mask = allowed_token_mask(params, token_bitmasks, vocab_size, device)
    seeded_rows = [(i, g) for i, g in enumerate(generators) if g is not None and not greedy[i]]
    default_idx = [i for i, g in enumerate(generators) if g is None and not greedy[i]]
    num_logprobs = [p.logprobs for p in params]
    lp_idx = [i for i, k in enumerate(num_logprobs) if k is not None]
    return SamplingMetadata(
        num_rows=n,
        vocab_size=vocab_size,
        all_greedy=all_greedy,
        all_random=not any(greedy),
        is_greedy=torch.tensor(greedy, dtype=torch.bool, device=device),
        temperature=temperature,
        top_k=top_k,
        max_top_k=max_top_k,
        top_p=row_values("top_p", 1.0),
        min_p=row_values("min_p", 0.0),
        repetition_penalty=rep,
        presence_penalty=pres,
        frequency_penalty=freq,
        prompt_mask=prompt_mask,
        output_counts=output_counts,
        banned_rows=banned_rows,
        banned_token_ids=banned_ids,
        bias_rows=bias_rows,
        bias_token_ids=bias_ids,
        bias_values=bias_values,
        allowed_rows=allowed_rows,
        allowed_mask=allowed_mask,
        seeded_rows=seeded_rows,
        default_rows=_index_tensor(default_idx, device),
        default_generator=default_generator,
        num_logprobs=num_logprobs,
        logprob_rows=_index_tensor(lp_idx, device),
        max_num_logprobs=max((num_logprobs[i] or 0 for i in lp_idx), default=0),
    )


def _check_lengths(params: Sequence[object], *per_row: Sequence[object]) -> None:
    names = ("prompt_token_ids", "output_token_ids", "generators", "eos_token_ids")
    for name, seq in zip(names, per_row, strict=True):
        if len(seq) != len(params):
            raise ValueError(f"{name} has {len(seq)} rows but params has {len(params)}")


def _index_tensor(idx: list[int], device: torch.device) -> torch.Tensor | None:
    return torch.tensor(idx, dtype=torch.int64, device=device) if idx else None


def _top_k(
    params: list[SamplingParams], greedy: list[bool], vocab_size: int, device: torch.device
) -> tuple[torch.Tensor | None, int]:
    ks = [
        p.top_k if (not g and 0 < p.top_k < vocab_size) else vocab_size
        for p, g in zip(params, greedy, strict=True)
    ]
    enabled = [k for k in ks if k < vocab_size]
    if not enabled:
        return None, 0
    return torch.tensor(ks, dtype=torch.int64, device=device), max(enabled)


def _penalties(
    params: list[SamplingParams],
    prompt_token_ids: list[list[int]],
    output_token_ids: list[list[int]],
    vocab_size: int,
    device: torch.device,
) -> tuple[torch.Tensor | None, ...]:
    """(repetition, presence, frequency, prompt_mask, output_counts); all None if unused."""
    rep = [float(p.repetition_penalty) for p in params]
    pres = [float(p.presence_penalty) for p in params]
    freq = [float(p.frequency_penalty) for p in params]
    use_rep = any(r != 1.0 for r in rep)
    use_additive = any(v != 0.0 for v in pres + freq)
    if not (use_rep or use_additive):
        return None, None, None, None, None

    def vec(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device)

    output_counts = token_counts(output_token_ids, vocab_size, device)
    prompt_mask = token_counts(prompt_token_ids, vocab_size, device) > 0 if use_rep else None
    return (
        vec(rep) if use_rep else None,
        vec(pres) if use_additive else None,
        vec(freq) if use_additive else None,
        prompt_mask,
        output_counts,
    )


def token_counts(token_ids: list[list[int]], vocab_size: int, device: torch.device) -> torch.Tensor:
    """[num_rows, vocab_size] float32 occurrence counts; ids outside [0, vocab_size) ignored."""
    n = len(token_ids)
    max_len = max((len(t) for t in token_ids), default=0)
    # Pad with vocab_size, a spare column dropped afterwards (also where bad ids go).
    padded = [
        [t if 0 <= t < vocab_size else vocab_size for t in row]
        + [vocab_size] * (max_len - len(row))
        for row in token_ids
    ]
    counts = torch.zeros((n, vocab_size + 1), dtype=torch.float32, device=device)
    if max_len:
        index = torch.tensor(padded, dtype=torch.int64, device=device)  # [num_rows, max_len]
        counts.scatter_add_(1, index, torch.ones(index.shape, dtype=torch.float32, device=device))
    return counts[:, :vocab_size]


def _bans(
    params: list[SamplingParams],
    output_token_ids: list[list[int]],
    eos_token_ids: list[tuple[int, ...]],
    vocab_size: int,
    device: torch.device,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(rows, token ids) to set to -inf: EOS and stop_token_ids before min_tokens, and bad
    words (a one-token word always; a longer word's last token right after its other tokens)."""
    rows: list[int] = []
    cols: list[int] = []
    for i, p in enumerate(params):
        banned: set[int] = set()
        output = output_token_ids[i]
        if len(output) < p.min_tokens:
            banned.update(eos_token_ids[i], p.stop_token_ids or ())
        for word in p.bad_words_token_ids or ():
            prefix = len(word) - 1
            if prefix == 0 or (len(output) >= prefix and tuple(output[-prefix:]) == word[:-1]):
                banned.add(word[-1])
        for tok in sorted(banned):
            if 0 <= tok < vocab_size:
                rows.append(i)
                cols.append(tok)
    return _index_tensor(rows, device), _index_tensor(cols, device)


def _logit_bias(
    params: list[SamplingParams], vocab_size: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    rows: list[int] = []
    cols: list[int] = []
    values: list[float] = []
    for i, p in enumerate(params):
        for tok, bias in (p.logit_bias or {}).items():
            if 0 <= tok < vocab_size:
                rows.append(i)
                cols.append(tok)
                values.append(bias)
    if not rows:
        return None, None, None
    return (_index_tensor(rows, device), _index_tensor(cols, device),
            torch.tensor(values, dtype=torch.float32, device=device))


def allowed_token_mask(
    params: list[SamplingParams],
    token_bitmasks: Sequence[torch.Tensor | None] | None,
    vocab_size: int,
    device: torch.device,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(rows, [rows, vocab_size] bool) from grammar bitmasks and allowed_token_ids."""
    bitmasks = token_bitmasks or [None] * len(params)
    rows = [i for i, p in enumerate(params)
            if bitmasks[i] is not None or p.allowed_token_ids is not None]
    if not rows:
        return None, None
    packed_rows = [j for j, i in enumerate(rows) if bitmasks[i] is not None]
    if len(packed_rows) == len(rows):  # grammar rows only (the common case): one unpack
        packed = torch.stack([bitmasks[i] for i in rows])  # type: ignore[misc]
        mask = unpack_bitmask(packed.to(device, non_blocking=True), vocab_size)
    else:
        mask = torch.ones((len(rows), vocab_size), dtype=torch.bool, device=device)
        if packed_rows:
            packed = torch.stack([bitmasks[rows[j]] for j in packed_rows])  # type: ignore[misc]
            index = torch.tensor(packed_rows, dtype=torch.int64, device=device)
            mask[index] = unpack_bitmask(packed.to(device), vocab_size)
    for j, i in enumerate(rows):
        ids = params[i].allowed_token_ids
        if ids is not None:
            only = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            only[torch.tensor([t for t in ids if t < vocab_size], dtype=torch.int64,
                              device=device)] = True
            mask[j] &= only
    return torch.tensor(rows, dtype=torch.int64, device=device), mask


def unpack_bitmask(packed: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """int32 [rows, words] (bit t % 32 of word t // 32) -> bool [rows, vocab_size]."""
    shifts = torch.arange(32, dtype=torch.int32, device=packed.device)
    bits = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & 1  # [rows, words, 32]
    return bits.reshape(packed.shape[0], -1)[:, :vocab_size].bool()
