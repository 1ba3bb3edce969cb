"""AttentionMetadata: what the attention kernels read for one step, built once, read by every layer.

Token layout of a step (the runner flattens the scheduled requests in order):

    tokens:  | seq 0 new tokens | seq 1 new tokens | ... |          query_start_loc[i]..[i+1]
    seq i:   | cached context (seq_lens[i] - query_lens[i]) | new tokens (query_lens[i]) |
    slot of new token at position p: block_table[p // block_size] * block_size + p % block_size

Sequences with one new token (decodes) form the ``decode`` batch; the others (prefill chunks)
the ``prefill`` batch, a varlen batch whose tokens are gathered out of the step's tokens:

    tokens:   | d | prefill A ... | d | d | prefill B ... |
    decode:     token_idx = [0, k, k+1]             (token_range when they are contiguous)
    prefill:    token_idx = [1..k-1, k+2..]; its own query_start_loc over those tokens only

Everything is computed for the whole batch with numpy array ops (``StepLayout``); no loop
over sequences builds tensors. ``build_attention_metadata`` is the list-in convenience
(tests, scoring without a KV cache); the runner's persistent batch (worker/input_batch.py)
feeds ``StepLayout`` from its preallocated per-slot block tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(slots=True)
class DecodeBatch:
    token_idx: torch.Tensor  # [num_decodes] int64 indices into the token dim
    token_range: tuple[int, int] | None  # (start, end) when those tokens are contiguous
    block_tables: torch.Tensor  # [num_decodes, max_blocks] int64 (0-padded)
    seq_lens: torch.Tensor  # [num_decodes] int32; 0 marks a padding row (CUDA graphs)
    num_splits: int | None = None  # flash-decoding split fixed by a CUDA graph; None = pick


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
    slot_mapping: torch.Tensor | None  # [num_tokens] int64; None without a KV cache
    seq_lens_per_token: torch.Tensor  # [num_tokens] int64, for dynamic rope scaling
    decode: DecodeBatch | None = None
    prefill: PrefillBatch | None = None
    sliding_window: int | None = None
    # the kernel backend's own per-step metadata (the CPU backend's decode plan), built once
    # per step by the runner from ``decode`` (kernels/contract.py); None when it has none
    backend_decode: object | None = None


def token_range(idx: np.ndarray) -> tuple[int, int] | None:
    """(start, end) when the sorted indices ``idx`` are one contiguous run."""
    n = int(idx.shape[0])
    if n and int(idx[-1]) - int(idx[0]) == n - 1:
        return int(idx[0]), int(idx[-1]) + 1
    return None


def ragged_arange(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """concat(arange(s, s + n) for s, n in zip(starts, lens)), without a Python loop."""
    total = int(lens.sum())
    offsets = np.cumsum(lens) - lens  # start of each run in the output
    return np.repeat(starts - offsets, lens) + np.arange(total, dtype=np.int64)


@dataclass(slots=True)
class StepLayout:
    """The host-side arrays of one step (int64 numpy), computed for the whole batch at once
    (``build``); the block tables stay where their owner keeps them."""

    query_lens: np.ndarray  # [num_seqs]
    seq_lens: np.ndarray  # [num_seqs]
    query_start_loc: np.ndarray  # [num_seqs + 1]
    positions: np.ndarray  # [num_tokens]
    seq_lens_per_token: np.ndarray  # [num_tokens]
    slot_mapping: np.ndarray | None  # [num_tokens]
    decode_rows: np.ndarray  # sequences with one new token (with a KV cache)
    prefill_rows: np.ndarray  # the other sequences with new tokens

    @staticmethod
    def build(
        query_lens: np.ndarray,
        num_computed: np.ndarray,
        table: np.ndarray | None,
        table_rows: np.ndarray | None,
        block_size: int,
    ) -> StepLayout:
        """Sequence i's block table is row ``table_rows[i]`` of ``table`` (None: no KV
        cache); only the entries the new tokens land in are read."""
        n = int(query_lens.shape[0])
        qsl = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(query_lens, out=qsl[1:])
        positions = ragged_arange(num_computed, query_lens)  # [num_tokens]
        seq_lens = num_computed + query_lens
        per_token = np.repeat(seq_lens, query_lens)
        slot_mapping = None
        if table is not None:
            assert table_rows is not None
            row_of_token = np.repeat(table_rows, query_lens)
            blocks = table[row_of_token, positions // block_size]
            slot_mapping = blocks * block_size + positions % block_size
            decode_rows = np.flatnonzero(query_lens == 1)
            prefill_rows = np.flatnonzero(query_lens > 1)
        else:
            decode_rows = np.zeros(0, dtype=np.int64)
            prefill_rows = np.flatnonzero(query_lens > 0)
        return StepLayout(query_lens, seq_lens, qsl, positions, per_token, slot_mapping,
                          decode_rows, prefill_rows)  # fmt: skip


ToDevice = Callable[[np.ndarray, torch.dtype], torch.Tensor]
# (rows of the block table, width) -> those rows' first ``width`` entries on the device
TableRows = Callable[[np.ndarray, int], torch.Tensor]


def metadata_from_layout(
    lay: StepLayout,
    table_rows: np.ndarray | None,
    num_blocks: np.ndarray | None,
    move: ToDevice,
    table: TableRows | None,
    sliding_window: int | None,
) -> AttentionMetadata:
    """AttentionMetadata over ``lay``. Sequence i's block table is row ``table_rows[i]``
    with ``num_blocks[i]`` real entries (None: no KV cache); a batch's tables are padded to
    its longest. ``move`` puts a host array on the step's device as the given dtype. The
    calls to ``move`` and ``table`` happen in a fixed order (a staging copy relies on it)."""
    decode = prefill = None
    qsl = lay.query_start_loc
    if lay.decode_rows.shape[0]:
        assert table is not None and table_rows is not None and num_blocks is not None
        rows = lay.decode_rows
        d_idx = qsl[rows]
        decode = DecodeBatch(
            token_idx=move(d_idx, torch.int64),
            token_range=token_range(d_idx),
            block_tables=table(table_rows[rows], int(num_blocks[rows].max())),
            seq_lens=move(lay.seq_lens[rows], torch.int32),
        )
    if lay.prefill_rows.shape[0]:
        rows = lay.prefill_rows
        lens = lay.query_lens[rows]
        p_idx = ragged_arange(qsl[rows], lens)
        local = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        np.cumsum(lens, out=local[1:])
        tables = None
        if table is not None:
            assert table_rows is not None and num_blocks is not None
            tables = table(table_rows[rows], int(num_blocks[rows].max()))
        prefill = PrefillBatch(
            token_idx=move(p_idx, torch.int64),
            token_range=token_range(p_idx),
            block_tables=tables,
            query_start_loc=move(local, torch.int32),
            seq_lens=move(lay.seq_lens[rows], torch.int32),
            max_query_len=int(lens.max()),
        )
    slot_mapping = None
    if lay.slot_mapping is not None:
        slot_mapping = move(lay.slot_mapping, torch.int64)
    return AttentionMetadata(
        num_tokens=int(qsl[-1]),
        slot_mapping=slot_mapping,
        seq_lens_per_token=move(lay.seq_lens_per_token, torch.int64),
        decode=decode,
        prefill=prefill,
        sliding_window=sliding_window,
    )


def pad_tables(tables: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """([num_seqs, longest] int64 0-padded, [num_seqs] lengths) from ragged lists."""
    lens = np.fromiter((len(t) for t in tables), dtype=np.int64, count=len(tables))
    width = int(lens.max()) if len(tables) else 0
    out = np.zeros((len(tables), width), dtype=np.int64)
    for i, t in enumerate(tables):  # convenience path (tests, scoring): not per serving step
        out[i, : len(t)] = t
    return out, lens


def host_to_device(device: torch.device) -> ToDevice:
    def move(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    return move


def build_attention_metadata(
    query_lens: list[int],
    seq_lens: list[int],
    block_tables: list[list[int]] | None,
    block_size: int,
    device: torch.device,
    sliding_window: int | None = None,
) -> AttentionMetadata:
    """Build one step's metadata from lists. ``block_tables`` None means no KV cache
    (training, scoring): each sequence then attends causally to its own new tokens only."""
    assert len(query_lens) == len(seq_lens)
    q = np.asarray(query_lens, dtype=np.int64).reshape(-1)
    computed = np.asarray(seq_lens, dtype=np.int64).reshape(-1) - q
    table = lens = None
    if block_tables is not None:
        table, lens = pad_tables(block_tables)
    rows = np.arange(q.shape[0], dtype=np.int64)
    lay = StepLayout.build(q, computed, table, rows if table is not None else None, block_size)
    move = host_to_device(device)
    pick = None
    if table is not None:
        full = table

        def pick(r: np.ndarray, width: int) -> torch.Tensor:
            return move(full[r, :width], torch.int64)

    return metadata_from_layout(lay, rows, lens, move, pick, sliding_window)


def decode_only_metadata(
    slot_mapping: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    seq_lens_per_token: torch.Tensor,
    sliding_window: int | None,
    num_splits: int | None,
) -> AttentionMetadata:
    """Metadata over static buffers for a batch of decodes only (CUDA graph capture): every
    tensor here is read in place by the kernels, so refilling the buffers and replaying the
    graph runs the new step."""
    n = int(slot_mapping.shape[0])
    token_idx = torch.arange(n, dtype=torch.int64, device=slot_mapping.device)
    decode = DecodeBatch(token_idx, (0, n), block_tables, seq_lens, num_splits)
    return AttentionMetadata(
        num_tokens=n,
        slot_mapping=slot_mapping,
        seq_lens_per_token=seq_lens_per_token,
        decode=decode,
        sliding_window=sliding_window,
    )
