"""The persistent input batch: a step's inputs equal the list-based builder's, whether the
arrays are used in place (CPU) or packed and copied once (the CUDA path, run on CPU here);
slots are reused; only block-table entries that changed travel; the vectorised sampling
metadata equals ``build_sampling_metadata``."""

from __future__ import annotations

import random
from dataclasses import fields

import pytest
import torch

from membound.core.outputs import NewRequestData, ScheduledChunk, SchedulerOutput
from membound.layers.attention.metadata import AttentionMetadata, build_attention_metadata
from membound.layers.sampling_metadata import SamplingMetadata, build_sampling_metadata
from membound.sampling_params import SamplingParams
from membound.worker.input_batch import InputBatch
from membound.worker.model_runner import RunnerRequestState

CPU = torch.device("cpu")
BS, VOCAB = 4, 50


def _same(a: object, b: object, what: str) -> None:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), what
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), what
    elif isinstance(a, list) and a and isinstance(a[0], tuple):  # seeded rows
        assert [(i, id(g)) for i, g in a] == [(i, id(g)) for i, g in b], what  # type: ignore[attr-defined]
    else:
        assert a == b, what


def _same_attention(got: AttentionMetadata, want: AttentionMetadata) -> None:
    for name in ("num_tokens", "slot_mapping", "seq_lens_per_token", "sliding_window"):
        _same(getattr(got, name), getattr(want, name), name)
    for part in ("decode", "prefill"):
        g, w = getattr(got, part), getattr(want, part)
        assert (g is None) == (w is None), part
        if g is not None:
            for f in fields(g):
                _same(getattr(g, f.name), getattr(w, f.name), f"{part}.{f.name}")


class Traffic:
    """Random steps: new requests, prefill chunks, decodes, finishes and preemptions, with
    block tables that grow as a scheduler's would."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.live: dict[str, tuple[int, int, list[int]]] = {}  # id -> (computed, total, table)
        self.next_id = self.next_block = 0
        self.sent: set[str] = set()

    def _blocks(self, table: list[int], upto: int) -> None:
        while len(table) * BS < upto:
            table.append(self.next_block)
            self.next_block += 1

    def step(self) -> SchedulerOutput:
        out = SchedulerOutput()
        rng = self.rng
        for rid in list(self.live):
            if rng.random() < 0.1:
                del self.live[rid]
                (out.preempted_req_ids if rng.random() < 0.5 else out.finished_req_ids).add(rid)
        while len(self.live) < 6 and rng.random() < 0.7:
            rid = f"r{self.next_id}"
            self.next_id += 1
            self.live[rid] = (0, rng.randint(1, 20), [])
        for rid, (done, total, table) in list(self.live.items()):
            if rng.random() < 0.2:
                continue  # not scheduled this step
            n = min(total - done, rng.randint(1, 7)) if done < total else 1
            self._blocks(table, done + n)
            if rid not in self.sent:
                self.sent.add(rid)
                params = SamplingParams(temperature=rng.choice([0, 0.8]), top_k=rng.choice([0, 5]),
                                        top_p=rng.choice([1.0, 0.9]), seed=rng.choice([None, 3]),
                                        logprobs=rng.choice([None, 2]))  # fmt: skip
                out.new_requests.append(NewRequestData(rid, [1] * total, params, (2,)))
            tokens = [rng.randrange(VOCAB) for _ in range(n)]
            out.chunks.append(ScheduledChunk(rid, tokens, done, list(table), done + n >= total))
            self.live[rid] = (done + n, max(total, done + n), table)
        return out


def _states(sched: SchedulerOutput, states: dict[str, RunnerRequestState]) -> None:
    for new in sched.new_requests:
        seed = new.sampling_params.seed
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        states[new.req_id] = RunnerRequestState(
            new.prompt_token_ids, new.sampling_params, new.eos_token_ids, gen
        )


@pytest.mark.parametrize("stage", [False, True])
@pytest.mark.parametrize("window", [None, 6])
def test_step_inputs_match_the_list_builder(stage: bool, window: int | None) -> None:
    traffic, states = Traffic(seed=1 + int(stage)), {}
    default = torch.Generator().manual_seed(0)
    batch = InputBatch(16, 256, BS, VOCAB, CPU, window, default, stage=stage)
    for _ in range(40):
        sched = traffic.step()
        _states(sched, states)
        got = batch.prepare(sched, states)
        chunks = sched.chunks
        qlens = [len(c.token_ids) for c in chunks]
        seq_lens = [c.num_computed_tokens + n for c, n in zip(chunks, qlens, strict=True)]
        want = build_attention_metadata(qlens, seq_lens, [c.block_table for c in chunks], BS,
                                        CPU, window)  # fmt: skip
        _same_attention(got.attn, want)
        assert got.input_ids.tolist() == [t for c in chunks for t in c.token_ids]
        assert got.positions.tolist() == [
            p for c in chunks for p in range(c.num_computed_tokens, c.num_computed_tokens
                                             + len(c.token_ids))]  # fmt: skip
        rows = [i for i, c in enumerate(chunks) if c.sample]
        assert got.sample_rows.tolist() == rows
        if not rows:
            assert got.sampling is None and got.sample_token_idx is None
            continue
        qsl = got.query_start_loc.tolist()
        assert got.sample_token_idx is not None
        assert got.sample_token_idx.tolist() == [qsl[i + 1] - 1 for i in rows]
        s = [states[chunks[i].req_id] for i in rows]
        ref = build_sampling_metadata(
            [x.params for x in s],
            [x.prompt_token_ids for x in s],
            [x.output_token_ids for x in s],
            [x.generator for x in s],
            [x.eos_token_ids for x in s],
            VOCAB,
            CPU,
            default,
        )
        assert got.sampling is not None
        for f in fields(SamplingMetadata):
            _same(getattr(got.sampling, f.name), getattr(ref, f.name), f.name)
    assert len(batch.slot_of) <= 16  # freed slots were reused


def test_only_new_block_table_entries_travel() -> None:
    batch = InputBatch(4, 64, BS, VOCAB, CPU, None, None, stage=True)
    sent: list[tuple[list[int], list[int], list[int]]] = []
    real = batch._update_tables

    def spy(slots: list[int], tables: list[list[int]]) -> tuple[list[int], ...]:
        sent.append(real(slots, tables))
        return sent[-1]

    batch._update_tables = spy  # type: ignore[method-assign]
    params = SamplingParams(temperature=0)
    states = {r: RunnerRequestState([1] * 8, params, (2,), None) for r in "ab"}

    def step(rid: str, tokens: int, done: int, table: list[int]) -> object:
        chunk = ScheduledChunk(rid, [1] * tokens, done, table, True)
        return batch.prepare(SchedulerOutput(chunks=[chunk]), states)

    step("a", 8, 0, [5, 6])
    step("a", 1, 8, [5, 6, 9])  # the scheduler's next block
    got = step("a", 1, 9, [5, 6, 9])  # nothing new: nothing sent
    assert sent == [([0, 0], [0, 1], [5, 6]), ([0], [2], [9]), ([], [], [])]
    assert got.attn.decode.block_tables.tolist() == [[5, 6, 9]]  # type: ignore[attr-defined]
    batch.prepare(SchedulerOutput(finished_req_ids={"a"}), states)
    assert sent[-1] == ([0, 0, 0], [0, 1, 2], [0, 0, 0])  # a's entries zeroed when it ended
    got = step("b", 1, 4, [7, 8])  # slot 0 again
    assert sent[-1] == ([0, 0], [0, 1], [7, 8])
    assert got.attn.decode.block_tables.tolist() == [[7, 8]]  # type: ignore[attr-defined]
    assert batch.device_table is not None and batch.device_table[0, :4].tolist() == [7, 8, 0, 0]


def test_penalties_take_the_general_builder() -> None:
    batch = InputBatch(4, 64, BS, VOCAB, CPU, None, None)
    params = SamplingParams(temperature=0, repetition_penalty=1.3, min_tokens=2)
    states = {"a": RunnerRequestState([1, 2, 3], params, (2,), None)}
    sched = SchedulerOutput(chunks=[ScheduledChunk("a", [1, 2, 3], 0, [0], True)])
    got = batch.prepare(sched, states)
    assert got.sampling is not None and got.sampling.repetition_penalty is not None
    assert got.sampling.banned_rows is not None  # min_tokens bans EOS


def test_too_many_requests_is_refused() -> None:
    batch = InputBatch(1, 64, BS, VOCAB, CPU, None, None)
    params = SamplingParams(temperature=0)
    states = {r: RunnerRequestState([1], params, (2,), None) for r in "ab"}
    chunks = [ScheduledChunk(r, [1], 0, [i], True) for i, r in enumerate("ab")]
    with pytest.raises(RuntimeError, match="max_num_seqs"):
        batch.prepare(SchedulerOutput(chunks=chunks), states)
