"""AttentionMetadata: everything attention needs for one step, built once, read by every layer.

Token layout of a step (the runner flattens the scheduled requests in order):

    tokens:  | seq 0 new tokens | seq 1 new tokens | ... |          query_start_loc[i]..[i+1]
    seq i:   | cached context (seq_lens[i] - query_lens[i]) | new tokens (query_lens[i]) |
    slot of new token at position p: block_table[p // block_size] * block_size + p % block_size

Sequences with one new token (decodes) form the ``decode`` batch; the others (prefill chunks)
the ``prefill`` batch, a varlen batch whose tokens are gathered out of the step's tokens:

    tokens:   | d | prefill A ... | d | d | prefill B ... |
    decode:     token_idx = [0, k, k+1]             (token_range when they are contiguous)
    prefill:    token_idx = [1..k-1, k+2..]; its own query_start_loc over those tokens only
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class PrefillSlice:
    """One prefill sequence (kept for readers that walk sequences one by one)."""

    token_start: int
    token_end: int
    seq_len: int
    block_table: torch.Tensor | None  # [num_blocks_of_seq] int64; None without a KV cache
    sliding_window: int | None = None
    device: torch.device | None = None

    @property
    def mask(self) -> torch.Tensor:
        """[query_len, seq_len] bool, True = attend (without a KV cache: [q_len, q_len])."""
        n, total = self.token_end - self.token_start, self.seq_len
        q_pos = torch.arange(total - n, total, device=self.device)[:, None]
        k_pos = torch.arange(total, device=self.device)[None, :]
        if self.block_table is None:
            k_pos = k_pos[:, total - n :]
        return _window_ok(q_pos, k_pos, self.sliding_window)


@dataclass(slots=True)
class DecodeBatch:
    token_idx: torch.Tensor  # [num_decodes] int64 indices into the token dim
    token_range: tuple[int, int] | None  # (start, end) when those tokens are contiguous
    block_tables: torch.Tensor  # [num_decodes, max_blocks] int64 (0-padded)
    seq_lens: torch.Tensor  # [num_decodes] int32; 0 marks a padding row (CUDA graphs)
    num_splits: int | None = None  # flash-decoding split fixed by a CUDA graph; None = pick
    plan: object | None = None  # the backend's per-step decode plan, built by the first layer


@dataclass(slots=True)
class PrefillBatch:
    token_idx: torch.Tensor  # [num_prefill_tokens] int64 indices into the token dim
    token_range: tuple[int, int] | None  # (start, end) when those tokens are contiguous
    block_tables: torch.Tensor | None  # [num_prefills, max_blocks] int64; None without cache
    query_start_loc: torch.Tensor  # [num_prefills + 1] int32, over the prefill tokens only
    seq_lens: torch.Tensor  # [num_prefills] int32, context + new tokens
    max_query_len: int


@dataclass(slots=True)
class AttentionMetadata:
    num_tokens: int
    query_start_loc: list[int]  # [num_seqs + 1]
    seq_lens: list[int]  # [num_seqs], context + new tokens
    slot_mapping: torch.Tensor | None  # [num_tokens] int64; None without a KV cache
    seq_lens_per_token: torch.Tensor  # [num_tokens], for dynamic rope scaling
    decode_token_idx: torch.Tensor  # [num_decodes] int64 indices into the token dim
    decode_block_tables: torch.Tensor | None  # [num_decodes, max_blocks] int64 (0-padded)
    prefills: list[PrefillSlice]
    decode: DecodeBatch | None = None
    prefill: PrefillBatch | None = None
    sliding_window: int | None = None
    block_size: int = 0

    @property
    def num_decodes(self) -> int:
        return int(self.decode_token_idx.numel())

    @property
    def decode_mask(self) -> torch.Tensor | None:
        """[num_decodes, 1, 1, max_blocks * block_size] bool, built on demand (the decode
        references derive it from ``decode.seq_lens``)."""
        if self.decode is None:
            return None
        kv_len = self.decode.block_tables.shape[1] * self.block_size
        k_pos = torch.arange(kv_len, device=self.decode.seq_lens.device)[None, :]
        q_pos = (self.decode.seq_lens.to(torch.int64) - 1)[:, None]
        return _window_ok(q_pos, k_pos, self.sliding_window)[:, None, None, :]


def _window_ok(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    causal = k_pos <= q_pos
    if window is None:
        return causal
    return causal & (q_pos - k_pos < window)


def _token_range(idx: list[int]) -> tuple[int, int] | None:
    if idx and idx[-1] - idx[0] == len(idx) - 1:
        return idx[0], idx[-1] + 1
    return None


def _pad_tables(tables: list[list[int]], device: torch.device) -> torch.Tensor:
    width = max((len(t) for t in tables), default=0)
    rows = [t + [0] * (width - len(t)) for t in tables]
    return torch.tensor(rows, dtype=torch.int64, device=device).view(len(tables), width)


def _decode_batch(
    decodes: list[int], qsl: list[int], seq_lens: list[int], block_tables: list[list[int]],
    device: torch.device,
) -> DecodeBatch:
    idx = [qsl[i] for i in decodes]
    return DecodeBatch(
        token_idx=torch.tensor(idx, dtype=torch.int64, device=device),
        token_range=_token_range(idx),
        block_tables=_pad_tables([block_tables[i] for i in decodes], device),
        seq_lens=torch.tensor([seq_lens[i] for i in decodes], dtype=torch.int32, device=device),
    )


def _prefill_batch(
    prefills: list[int], qsl: list[int], seq_lens: list[int],
    block_tables: list[list[int]] | None, device: torch.device,
) -> PrefillBatch:
    idx = [t for i in prefills for t in range(qsl[i], qsl[i + 1])]
    local = [0]
    for i in prefills:
        local.append(local[-1] + qsl[i + 1] - qsl[i])
    tables = None
    if block_tables is not None:
        tables = _pad_tables([block_tables[i] for i in prefills], device)
    return PrefillBatch(
        token_idx=torch.tensor(idx, dtype=torch.int64, device=device),
        token_range=_token_range(idx),
        block_tables=tables,
        query_start_loc=torch.tensor(local, dtype=torch.int32, device=device),
        seq_lens=torch.tensor([seq_lens[i] for i in prefills], dtype=torch.int32, device=device),
        max_query_len=max(qsl[i + 1] - qsl[i] for i in prefills),
    )


def build_attention_metadata(
    query_lens: list[int],
    seq_lens: list[int],
    block_tables: list[list[int]] | None,
    block_size: int,
    device: torch.device,
    sliding_window: int | None = None,
) -> AttentionMetadata:
    """Build the step's metadata. ``block_tables`` None means no KV cache (training, scoring):
    each sequence then attends causally to its own new tokens only."""
    assert len(query_lens) == len(seq_lens)
    qsl = [0]
    for n in query_lens:
        qsl.append(qsl[-1] + n)
    per_token = torch.repeat_interleave(
        torch.tensor(seq_lens, dtype=torch.int64), torch.tensor(query_lens, dtype=torch.int64)
    )
    slot_mapping = None
    if block_tables is not None:
        slot_mapping = _slot_mapping(query_lens, seq_lens, block_tables, block_size).to(device)
    decodes = [i for i, n in enumerate(query_lens) if n == 1 and block_tables is not None]
    decode_set = set(decodes)
    prefill_ids = [i for i, n in enumerate(query_lens) if n > 0 and i not in decode_set]
    decode = prefill = None
    if decodes:
        assert block_tables is not None
        decode = _decode_batch(decodes, qsl, seq_lens, block_tables, device)
    slices: list[PrefillSlice] = []
    if prefill_ids:
        prefill = _prefill_batch(prefill_ids, qsl, seq_lens, block_tables, device)
        for j, i in enumerate(prefill_ids):
            table = None
            if prefill.block_tables is not None:
                assert block_tables is not None
                table = prefill.block_tables[j, : len(block_tables[i])]  # a view, no copy
            slices.append(
                PrefillSlice(qsl[i], qsl[i + 1], seq_lens[i], table, sliding_window, device)
            )
    return AttentionMetadata(
        num_tokens=qsl[-1],
        query_start_loc=qsl,
        seq_lens=list(seq_lens),
        slot_mapping=slot_mapping,
        seq_lens_per_token=per_token.to(device),
        decode_token_idx=(
            decode.token_idx if decode is not None
            else torch.empty(0, dtype=torch.int64, device=device)
        ),
        decode_block_tables=decode.block_tables if decode is not None else None,
        prefills=slices,
        decode=decode,
        prefill=prefill,
        sliding_window=sliding_window,
        block_size=block_size,
    )


def decode_only_metadata(
    slot_mapping: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    seq_lens_per_token: torch.Tensor,
    block_size: int,
    sliding_window: int | None,
    num_splits: int | None,
) -> AttentionMetadata:
    """Metadata over static buffers for a batch of decodes only (CUDA graph capture): every
    tensor here is read in place by the kernels, so refilling the buffers and replaying the
    graph runs the new step. Host-side lists describe the captured (padded) batch."""
    n = int(slot_mapping.shape[0])
    token_idx = torch.arange(n, dtype=torch.int64, device=slot_mapping.device)
    decode = DecodeBatch(token_idx, (0, n), block_tables, seq_lens, num_splits)
    return AttentionMetadata(
        num_tokens=n,
        query_start_loc=list(range(n + 1)),
        seq_lens=[1] * n,
        slot_mapping=slot_mapping,
        seq_lens_per_token=seq_lens_per_token,
        decode_token_idx=token_idx,
        decode_block_tables=block_tables,
        prefills=[],
        decode=decode,
        sliding_window=sliding_window,
        block_size=block_size,
    )


def _slot_mapping(
    query_lens: list[int], seq_lens: list[int], block_tables: list[list[int]], block_size: int
) -> torch.Tensor:
    slots: list[torch.Tensor] = []
    for n, total, table in zip(query_lens, seq_lens, block_tables, strict=True):
        pos = torch.arange(total - n, total, dtype=torch.int64)
        blocks = torch.tensor(table, dtype=torch.int64)[pos // block_size]
        slots.append(blocks * block_size + pos % block_size)
    if not slots:
        return torch.empty(0, dtype=torch.int64)
    return torch.cat(slots)
