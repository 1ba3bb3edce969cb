"""InputBatch: the runner's persistent per-slot state, and a step's device-ready inputs.

A running request holds a slot for as long as it keeps its KV blocks (vLLM v1's InputBatch,
SGLang's ForwardBatch keep the same):

    block_table  [max_num_seqs, max_blocks] int64   row = slot; entries past num_blocks unused
    num_blocks   [max_num_seqs]                     how many entries of each row are real
    sampling     per-slot sampling settings (worker/sampling_batch.py)

Per step, from a SchedulerOutput: finished and preempted requests give their slots back
(a preempted request's blocks are gone; it gets a fresh slot when it runs again); each
scheduled chunk appends the blocks its table gained since the last step (a table that
changed otherwise is rewritten). Everything else (positions, slot mapping, the decode and
prefill batches, sampling rows) is computed for the whole batch with numpy array ops
(layers/attention/metadata.py), then moved to the device in one copy (``Staging``). On a
GPU the device keeps its own block table; only the entries that changed travel, in that
same copy, and are scattered into it on the device.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from membound.core.outputs import SchedulerOutput
from membound.layers.attention.metadata import (
    AttentionMetadata,
    StepLayout,
    TableRows,
    ToDevice,
    metadata_from_layout,
)
from membound.layers.sampling_metadata import SamplingMetadata
from membound.worker.sampling_batch import SamplingBatch
from membound.worker.staging import Staging


@dataclass(slots=True)
class StepInputs:
    """One step's inputs on the device, plus the host-side row layout the runner reads."""

    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    attn: AttentionMetadata
    query_start_loc: np.ndarray  # [num_seqs + 1] int64 (host)
    sample_rows: np.ndarray  # chunks that sample this step (host)
    sample_token_idx: torch.Tensor | None  # [num_sample_rows] int64: their last tokens
    sampling: SamplingMetadata | None  # None when no chunk samples


class InputBatch:
    def __init__(
        self,
        max_num_seqs: int,
        max_model_len: int,
        block_size: int,
        vocab_size: int,
        device: torch.device,
        sliding_window: int | None,
        default_generator: torch.Generator | None,
        stage: bool | None = None,
    ) -> None:
        self.block_size = block_size
        self.device = device
        self.sliding_window = sliding_window
        self.max_blocks = -(-max_model_len // block_size)
        self.block_table = np.zeros((max_num_seqs, self.max_blocks), dtype=np.int64)
        self.num_blocks = [0] * max_num_seqs
        self.slot_of: dict[str, int] = {}
        self._zeroed: list[tuple[int, int, int]] = []  # (slot, from, to) zeroed since last step
        self.free_slots = list(range(max_num_seqs - 1, -1, -1))  # pop() hands out slot 0 first
        self.sampling = SamplingBatch(max_num_seqs, vocab_size, device, default_generator)
        # one pinned host buffer -> one device copy (CUDA); on the CPU the arrays are used
        # in place unless ``stage`` asks for the copy path (tests)
        self.staging = (
            Staging(device, pinned=device.type == "cuda")
            if (stage if stage is not None else device.type != "cpu")
            else None
        )
        self.device_table: torch.Tensor | None = None
        if self.staging is not None:
            self.device_table = torch.zeros(self.block_table.shape, dtype=torch.int64,
                                            device=device)  # fmt: skip

    # ---- persistent state ------------------------------------------------------------
    def release(self, req_id: str) -> None:
        slot = self.slot_of.pop(req_id, None)
        if slot is not None:
            self._clear_row(slot, 0)
            self.sampling.clear(slot)
            self.free_slots.append(slot)

    def _slot(self, req_id: str, states: dict[str, Any]) -> int:
        slot = self.slot_of.get(req_id)
        if slot is None:
            if not self.free_slots:
                raise RuntimeError(
                    f"more than {len(self.block_table)} requests scheduled at once; the "
                    "scheduler's max_num_seqs and the runner's must agree"
                )
            slot = self.free_slots.pop()
            self.slot_of[req_id] = slot
            self.sampling.set(slot, states[req_id])
        return slot

    def _clear_row(self, slot: int, keep: int) -> None:
        """Zero the entries of ``slot`` from ``keep`` on (padding reads 0, as it always has);
        the device's copy is zeroed with the next step's changes."""
        old = self.num_blocks[slot]
        if old > keep:
            self.block_table[slot, keep:old] = 0
            self._zeroed.append((slot, keep, old))
        self.num_blocks[slot] = keep

    def _update_tables(
        self, slots: list[int], tables: list[list[int]]
    ) -> tuple[list[int], list[int], list[int]]:
        """Write the entries each slot's table gained; returns every entry that changed
        since the last step (zeroed ones included) as (rows, cols, values)."""
        rows: list[int] = []
        cols: list[int] = []
        values: list[int] = []
        for slot, lo, hi in self._zeroed:
            rows.extend([slot] * (hi - lo))
            cols.extend(range(lo, hi))
            values.extend([0] * (hi - lo))
        self._zeroed.clear()
        bt, nb = self.block_table, self.num_blocks
        for slot, table in zip(slots, tables, strict=True):
            old, new = nb[slot], len(table)
            if new == old and (old == 0 or bt[slot, old - 1] == table[-1]):
                continue
            if new < old or (old and bt[slot, old - 1] != table[old - 1]):
                self._clear_row(slot, 0)  # not an append (should not happen): rewrite the row
                for s, lo, hi in self._zeroed:
                    rows.extend([s] * (hi - lo))
                    cols.extend(range(lo, hi))
                    values.extend([0] * (hi - lo))
                self._zeroed.clear()
                old = 0
            bt[slot, old:new] = table[old:]
            nb[slot] = new
            rows.extend([slot] * (new - old))
            cols.extend(range(old, new))
            values.extend(table[old:])
        return rows, cols, values

    # ---- one step ---------------------------------------------------------------------
    def prepare(
        self, sched: SchedulerOutput, states: dict[str, Any],
        token_bitmasks: dict[str, torch.Tensor] | None = None,
    ) -> StepInputs:
        """``states``: req_id -> the runner's RunnerRequestState (params, histories);
        ``token_bitmasks``: req_id -> packed allowed-token bitmask (structured outputs)."""
        for rid in sched.finished_req_ids:
            self.release(rid)
        for rid in sched.preempted_req_ids:
            self.release(rid)
        chunks = sched.chunks
        slots = [self._slot(c.req_id, states) for c in chunks]
        changed = self._update_tables(slots, [c.block_table for c in chunks])
        n = len(chunks)
        query_lens = np.fromiter((len(c.token_ids) for c in chunks), np.int64, n)
        host = _HostStep(
            ids=np.fromiter(
                itertools.chain.from_iterable(c.token_ids for c in chunks),
                np.int64,
                int(query_lens.sum()),
            ),
            lay=StepLayout.build(
                query_lens,
                np.fromiter((c.num_computed_tokens for c in chunks), np.int64, n),
                self.block_table,
                np.array(slots, dtype=np.int64),
                self.block_size,
            ),
            slots=np.array(slots, dtype=np.int64),
            num_blocks=np.array(self.num_blocks, dtype=np.int64)[slots],
            sample_rows=np.flatnonzero(np.fromiter((c.sample for c in chunks), np.bool_, n)),
        )
        general = None
        rows = host.sample_rows
        if rows.shape[0] and (token_bitmasks or self.sampling.needs_general(host.slots[rows])):
            rids = [chunks[i].req_id for i in rows]
            general = self.sampling.general(rids, states, token_bitmasks)
        if self.staging is None:
            bt = self.block_table

            def table(rows: np.ndarray, width: int) -> torch.Tensor:
                return torch.from_numpy(bt[rows, :width])

            return self._inputs(host, _from_numpy, table, general)
        return self._staged(host, changed, general)

    def _inputs(
        self,
        host: _HostStep,
        move: ToDevice,
        table: TableRows,
        general: SamplingMetadata | None,
    ) -> StepInputs:
        """Every device tensor of the step, made through ``move``/``table`` in a fixed order."""
        lay, rows = host.lay, host.sample_rows
        input_ids, positions = move(host.ids, torch.int64), move(lay.positions, torch.int64)
        md = metadata_from_layout(lay, host.slots, host.num_blocks, move, table,
                                  self.sliding_window)  # fmt: skip
        last = sampling = None
        if rows.shape[0]:
            last = move(lay.query_start_loc[rows + 1] - 1, torch.int64)
            sampling = general or self.sampling.build(host.slots[rows], move)
        return StepInputs(input_ids, positions, md, lay.query_start_loc, rows, last, sampling)

    def _staged(
        self,
        host: _HostStep,
        changed: tuple[list[int], list[int], list[int]],
        general: SamplingMetadata | None,
    ) -> StepInputs:
        """Pass 1 packs every array into the staging buffer; one copy; pass 2 takes views."""
        st, dev_table = self.staging, self.device_table
        assert st is not None and dev_table is not None
        st.reset()
        st.add(np.array(changed, dtype=np.int64).reshape(3, -1))

        def add(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            st.add(a.astype(_NUMPY_DTYPES[dtype], copy=False))
            return _PLACEHOLDER

        def add_rows(rows: np.ndarray, width: int) -> torch.Tensor:
            st.add(rows)
            return _PLACEHOLDER

        self._inputs(host, add, add_rows, general)
        st.copy_to_device()
        r, c, v = st.take()  # the block-table entries that changed: scattered on the device
        if r.shape[0]:
            dev_table[r, c] = v

        def take(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return st.take()

        def gather(rows: np.ndarray, width: int) -> torch.Tensor:
            return dev_table.index_select(0, st.take())[:, :width]

        return self._inputs(host, take, gather, general)


@dataclass(slots=True)
class _HostStep:
    ids: np.ndarray  # [num_tokens]
    lay: StepLayout
    slots: np.ndarray  # [num_seqs] each chunk's slot
    num_blocks: np.ndarray  # [num_seqs] real entries of each chunk's block table
    sample_rows: np.ndarray  # chunks that sample this step


def _from_numpy(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t if t.dtype == dtype else t.to(dtype)


_PLACEHOLDER = torch.empty(0)
_NUMPY_DTYPES = {torch.int64: np.int64, torch.int32: np.int32, torch.float32: np.float32,
                 torch.bool: np.bool_}  # fmt: skip
