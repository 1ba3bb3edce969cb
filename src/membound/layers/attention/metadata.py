"""AttentionMetadata: everything attention needs for one step, built once, read by every layer.

Token layout of a step (the runner flattens the scheduled requests in order):

    tokens:  | seq 0 new tokens | seq 1 new tokens | ... |          query_start_loc[i]..[i+1]
    seq i:   | cached context (seq_lens[i] - query_lens[i]) | new tokens (query_lens[i]) |
    slot of new token at position p: block_table[p // block_size] * block_size + p % block_size

Sequences with one new token (decodes) are attended to as one batch; the others (prefill
chunks) one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class PrefillSlice:
    token_start: int
    token_end: int
    seq_len: int
    block_table: torch.Tensor | None  # [num_blocks_of_seq] int64; None without a KV cache
    mask: torch.Tensor  # [query_len, seq_len] bool, True = attend


@dataclass(slots=True)
class AttentionMetadata:
    num_tokens: int
    query_start_loc: list[int]  # [num_seqs + 1]
    seq_lens: list[int]  # [num_seqs], context + new tokens
    slot_mapping: torch.Tensor | None  # [num_tokens] int64; None without a KV cache
    seq_lens_per_token: torch.Tensor  # [num_tokens], for dynamic rope scaling
    decode_token_idx: torch.Tensor  # [num_decodes] int64 indices into the token dim
    decode_block_tables: torch.Tensor | None  # [num_decodes, max_blocks] int64 (0-padded)
    decode_mask: torch.Tensor | None  # [num_decodes, 1, 1, max_blocks * block_size] bool
    prefills: list[PrefillSlice]

    @property
    def num_decodes(self) -> int:
        return int(self.decode_token_idx.numel())


def _window_ok(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    causal = k_pos <= q_pos
    if window is None:
        return causal
    return causal & (q_pos - k_pos < window)


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
    num_tokens = qsl[-1]
    per_token = torch.repeat_interleave(
        torch.tensor(seq_lens, dtype=torch.int64), torch.tensor(query_lens, dtype=torch.int64)
    )
    slot_mapping = None
    if block_tables is not None:
        slot_mapping = _slot_mapping(query_lens, seq_lens, block_tables, block_size).to(device)
    use_decode_batch = block_tables is not None
    decodes = [i for i, n in enumerate(query_lens) if n == 1 and use_decode_batch]
    decode_set = set(decodes)
    prefills: list[PrefillSlice] = []
    for i, (n, total) in enumerate(zip(query_lens, seq_lens)):
        if i in decode_set or n == 0:
            continue
        q_pos = torch.arange(total - n, total, device=device)[:, None]
        k_pos = torch.arange(total, device=device)[None, :]
        table = None
        if block_tables is not None:
            table = torch.tensor(block_tables[i], dtype=torch.int64, device=device)
        else:
            k_pos = k_pos[:, total - n :]
        prefills.append(
            PrefillSlice(qsl[i], qsl[i + 1], total, table, _window_ok(q_pos, k_pos, sliding_window))
        )
    decode_tables = decode_mask = None
    if decodes:
        assert block_tables is not None
        max_blocks = max(len(block_tables[i]) for i in decodes)
        rows = [block_tables[i] + [0] * (max_blocks - len(block_tables[i])) for i in decodes]
        decode_tables = torch.tensor(rows, dtype=torch.int64, device=device)
        lens = torch.tensor([seq_lens[i] for i in decodes], dtype=torch.int64, device=device)
        k_pos = torch.arange(max_blocks * block_size, device=device)[None, :]
        q_pos = (lens - 1)[:, None]
        mask = _window_ok(q_pos, k_pos, sliding_window)
        decode_mask = mask[:, None, None, :]
    return AttentionMetadata(
        num_tokens=num_tokens,
        query_start_loc=qsl,
        seq_lens=list(seq_lens),
        slot_mapping=slot_mapping,
        seq_lens_per_token=per_token.to(device),
        decode_token_idx=torch.tensor([qsl[i] for i in decodes], dtype=torch.int64, device=device),
        decode_block_tables=decode_tables,
        decode_mask=decode_mask,
        prefills=prefills,
    )


def _slot_mapping(
    query_lens: list[int], seq_lens: list[int], block_tables: list[list[int]], block_size: int
) -> torch.Tensor:
    slots: list[torch.Tensor] = []
    for n, total, table in zip(query_lens, seq_lens, block_tables):
        pos = torch.arange(total - n, total, dtype=torch.int64)
        blocks = torch.tensor(table, dtype=torch.int64)[pos // block_size]
        slots.append(blocks * block_size + pos % block_size)
    if not slots:
        return torch.empty(0, dtype=torch.int64)
    return torch.cat(slots)
