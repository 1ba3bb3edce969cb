"""Sampler: greedy, filtering, penalties, min_tokens, seeds, logprobs, padded vocab."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from membound.layers.sampler import (
    Sampler,
    SamplingMetadata,
    apply_penalties,
    build_sampling_metadata,
    make_generator,
    prompt_logprobs,
)
from membound.sampling_params import SamplingParams

CPU = torch.device("cpu")


def _meta(
    params: list[SamplingParams],
    vocab: int,
    *,
    prompts: list[list[int]] | None = None,
    outputs: list[list[int]] | None = None,
    generators: list[torch.Generator | None] | None = None,
    eos: list[tuple[int, ...]] | None = None,
    default_generator: torch.Generator | None = None,
) -> SamplingMetadata:
    n = len(params)
    return build_sampling_metadata(
        params,
        prompts if prompts is not None else [[] for _ in range(n)],
        outputs if outputs is not None else [[] for _ in range(n)],
        generators if generators is not None else [None] * n,
        eos if eos is not None else [() for _ in range(n)],
        vocab,
        CPU,
        default_generator,
    )


def _many(logits_row: list[float], params: SamplingParams, n: int, seed: int = 0) -> list[int]:
    """Sample ``n`` times from one row (n identical rows, one seeded default generator)."""
    logits = torch.tensor([logits_row] * n)
    md = _meta([params] * n, len(logits_row), default_generator=make_generator(seed))
    return Sampler()(logits, md).sampled_token_ids


def _logits_for(probs: list[float]) -> list[float]:
    return [math.log(p) for p in probs]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_equals_argmax_and_leaves_logits_alone(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(9, 64, generator=gen) * 3).to(dtype)
    before = logits.clone()
    out = Sampler()(logits, _meta([SamplingParams(temperature=0.0)] * 9, 64))
    assert out.sampled_token_ids == logits.float().argmax(-1).tolist()
    assert out.logprobs == [None] * 9 and out.ranks == [None] * 9
    assert torch.equal(logits, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_backend_samples_what_the_references_do(native, dtype: torch.dtype) -> None:
    """A sampler on the CPU backend (its native argmax for greedy rows) picks the reference
    sampler's tokens: all greedy (a padded vocabulary's strided view), and a mixed batch."""
    from membound.kernels.contract import CpuOps

    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(6, 70, generator=gen) * 3).to(dtype)
    mine, ref = Sampler(CpuOps(native=native)), Sampler()
    md = _meta([SamplingParams(temperature=0.0)] * 6, 64)  # 70 columns: 6 of padding
    assert mine(logits, md).sampled_token_ids == ref(logits, md).sampled_token_ids
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.8, seed=1)] * 3
    md = _meta(params, 64, generators=[None, make_generator(1)] * 3)
    got = mine(logits, md).sampled_token_ids
    md = _meta(params, 64, generators=[None, make_generator(1)] * 3)
    assert got == ref(logits, md).sampled_token_ids


def test_random_sampling_leaves_logits_alone() -> None:
    logits = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    before = logits.clone()
    params = SamplingParams(temperature=0.7, top_k=5, top_p=0.8, min_p=0.05, presence_penalty=1.0)
    Sampler()(logits, _meta([params] * 4, 32, outputs=[[1, 2]] * 4))
    assert torch.equal(logits, before)


def _reference_penalties(
    logits: list[list[float]],
    params: list[SamplingParams],
    prompts: list[list[int]],
    outputs: list[list[int]],
) -> list[list[float]]:
    result = []
    for row, p, prompt, output in zip(logits, params, prompts, outputs, strict=True):
        row = list(row)
        for tok in set(prompt) | set(output):
            r = p.repetition_penalty
            row[tok] = row[tok] / r if row[tok] > 0 else row[tok] * r
        for tok, count in Counter(output).items():
            row[tok] -= p.frequency_penalty * count + p.presence_penalty
        result.append(row)
    return result


def _penalty_case(seed: int) -> tuple[torch.Tensor, list[SamplingParams], list, list]:
    gen = torch.Generator().manual_seed(seed)
    vocab = 40
    logits = torch.randn(5, vocab, generator=gen) * 3
    params = [
        SamplingParams(repetition_penalty=1.3),
        SamplingParams(presence_penalty=0.7, frequency_penalty=-0.4),
        SamplingParams(repetition_penalty=0.8, presence_penalty=-1.5, frequency_penalty=2.0),
        SamplingParams(),
        SamplingParams(temperature=0.0, repetition_penalty=1.7, frequency_penalty=0.5),
    ]
    prompts = [torch.randint(0, vocab, (7,), generator=gen).tolist() for _ in params]
    outputs = [torch.randint(0, vocab, (int(n),), generator=gen).tolist() for n in (9, 0, 5, 3, 12)]
    return logits, params, prompts, outputs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_penalties_match_reference(seed: int) -> None:
    logits, params, prompts, outputs = _penalty_case(seed)
    md = _meta(params, logits.shape[1], prompts=prompts, outputs=outputs)
    got = apply_penalties(logits.clone(), md)
    want = _reference_penalties(logits.tolist(), params, prompts, outputs)
    torch.testing.assert_close(got, torch.tensor(want))


def test_greedy_rows_take_argmax_of_penalised_logits_in_mixed_batch() -> None:
    logits, params, prompts, outputs = _penalty_case(3)
    params[0] = SamplingParams(temperature=0.0, repetition_penalty=1.3)
    md = _meta(params, logits.shape[1], prompts=prompts, outputs=outputs)
    got = Sampler()(logits, md).sampled_token_ids
    want = torch.tensor(_reference_penalties(logits.tolist(), params, prompts, outputs))
    for row in (0, 4):
        assert got[row] == int(want[row].argmax())


def test_presence_frequency_ignore_prompt_tokens() -> None:
    logits = torch.zeros(1, 8)
    md = _meta([SamplingParams(presence_penalty=1.0, frequency_penalty=1.0)], 8, prompts=[[3]])
    assert torch.equal(apply_penalties(logits.clone(), md), logits)


def test_min_tokens_bans_eos_and_stop_ids_until_reached() -> None:
    vocab, eos, stop = 10, 2, 7
    row = [0.0] * vocab
    row[eos], row[stop], row[5] = 9.0, 8.0, 1.0
    logits = torch.tensor([row] * 3)
    params = [
        SamplingParams(temperature=0.0, min_tokens=3, stop_token_ids=[stop]),
        SamplingParams(temperature=0.0, min_tokens=3, stop_token_ids=[stop], ignore_eos=True),
        SamplingParams(temperature=0.0, min_tokens=3, stop_token_ids=[stop]),
    ]
    outputs = [[1], [1, 1], [1, 1, 1]]  # last row has reached min_tokens
    md = _meta(params, vocab, outputs=outputs, eos=[(eos,)] * 3)
    assert Sampler()(logits, md).sampled_token_ids == [5, 5, eos]
    random_params = SamplingParams(temperature=1.0, min_tokens=1, stop_token_ids=[stop])
    md = _meta(
        [random_params] * 500, vocab, eos=[(eos,)] * 500, default_generator=make_generator(0)
    )
    sampled = Sampler()(torch.tensor([row] * 500), md).sampled_token_ids
    assert eos not in sampled and stop not in sampled


@pytest.mark.parametrize("top_k", [1, 3, 6])
def test_top_k_never_emits_excluded_tokens(top_k: int) -> None:
    logits_row = torch.randn(16, generator=torch.Generator().manual_seed(top_k)).tolist()
    allowed = set(torch.tensor(logits_row).topk(top_k).indices.tolist())
    sampled = _many(logits_row, SamplingParams(temperature=2.0, top_k=top_k), 3000)
    assert set(sampled) == allowed


def test_top_k_rows_with_different_k_in_one_batch() -> None:
    row = list(range(12))  # token i has logit i
    params = [SamplingParams(top_k=k, temperature=5.0) for k in (2, 0, 5)] * 400
    md = _meta(params, 12, default_generator=make_generator(3))
    out = Sampler()(torch.tensor([row] * len(params), dtype=torch.float32), md)
    by_k: dict[int, set[int]] = {2: set(), 0: set(), 5: set()}
    for p, tok in zip(params, out.sampled_token_ids, strict=True):
        by_k[p.top_k].add(tok)
    assert by_k[2] == {10, 11} and by_k[5] == {7, 8, 9, 10, 11} and len(by_k[0]) > 5


@pytest.mark.parametrize(
    ("top_p", "allowed"), [(0.45, {0}), (0.75, {0, 1}), (0.9, {0, 1, 2}), (1.0, {0, 1, 2, 3})]
)
def test_top_p_never_emits_excluded_tokens(top_p: float, allowed: set[int]) -> None:
    logits_row = _logits_for([0.5, 0.3, 0.15, 0.05])
    sampled = _many(logits_row, SamplingParams(top_p=top_p), 3000)
    assert set(sampled) == allowed


def test_top_k_and_top_p_together() -> None:
    logits_row = _logits_for([0.4, 0.3, 0.2, 0.1])
    # top_k=3 renormalises to (4/9, 3/9, 2/9); top_p=0.7 then keeps tokens 0 and 1.
    sampled = _many(logits_row, SamplingParams(top_k=3, top_p=0.7), 3000)
    assert set(sampled) == {0, 1}


@pytest.mark.parametrize(("temperature", "allowed"), [(1.0, {0, 1, 2}), (0.5, {0, 1})])
def test_min_p_applies_after_temperature(temperature: float, allowed: set[int]) -> None:
    # T=1: threshold 0.4 * 0.4 = 0.16. T=0.5: probs ~ (.53, .30, .13, .03), threshold .21.
    logits_row = _logits_for([0.4, 0.3, 0.2, 0.1])
    sampled = _many(logits_row, SamplingParams(temperature=temperature, min_p=0.4), 3000)
    assert set(sampled) == allowed


def _chi_square(samples: list[int], probs: torch.Tensor) -> float:
    counts = Counter(samples)
    n = len(samples)
    return sum((counts.get(i, 0) - n * p) ** 2 / (n * p) for i, p in enumerate(probs.tolist()))


@pytest.mark.parametrize("temperature", [0.6, 1.0, 2.5])
def test_empirical_distribution_matches_softmax_over_temperature(temperature: float) -> None:
    logits_row = [1.0, 0.2, -0.5, 0.9, -1.5, 0.0]
    samples = _many(logits_row, SamplingParams(temperature=temperature), 20000, seed=11)
    expected = torch.softmax(torch.tensor(logits_row, dtype=torch.float64) / temperature, -1)
    # 5 degrees of freedom: P(chi2 > 25.7) = 1e-4.
    assert _chi_square(samples, expected) < 25.7


def _seeded_run(
    step_logits: list[torch.Tensor], params: SamplingParams, batch: list[SamplingParams] | None
) -> list[int]:
    """Tokens of one seeded request over several steps, alone or at row 1 of a batch."""
    gen = make_generator(params.seed or 0)
    others = batch or []
    default = make_generator(999)
    other_gens = [make_generator(p.seed) if p.seed is not None else None for p in others]
    tokens = []
    for step, row_logits in enumerate(step_logits):
        if not others:
            md = _meta([params], row_logits.shape[0], generators=[gen])
            tokens.append(Sampler()(row_logits.unsqueeze(0), md).sampled_token_ids[0])
            continue
        noise = torch.randn(len(others), row_logits.shape[0], generator=make_generator(step))
        logits = torch.cat([noise[:1], row_logits.unsqueeze(0), noise[1:]])
        all_params = [others[0], params, *others[1:]]
        gens = [other_gens[0], gen, *other_gens[1:]]
        md = _meta(all_params, row_logits.shape[0], generators=gens, default_generator=default)
        tokens.append(Sampler()(logits, md).sampled_token_ids[1])
    return tokens


def test_seeded_request_reproduces_alone_and_in_any_batch() -> None:
    vocab = 50
    step_logits = [torch.randn(vocab, generator=make_generator(100 + s)) for s in range(12)]
    params = SamplingParams(temperature=1.3, top_k=30, top_p=0.95, seed=1234)
    alone = _seeded_run(step_logits, params, None)
    assert alone == _seeded_run(step_logits, params, None)  # fresh generator, same seed
    batch = [
        SamplingParams(temperature=0.9),
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0, seed=7, top_p=0.5),
        SamplingParams(temperature=0.5, min_p=0.1),
    ]
    assert _seeded_run(step_logits, params, batch) == alone
    assert _seeded_run(step_logits, params, batch[2:] + batch[:2]) == alone
    other_seed = SamplingParams(temperature=1.3, top_k=30, top_p=0.95, seed=4321)
    assert _seeded_run(step_logits, other_seed, None) != alone


def test_logprobs_are_raw_and_contain_sampled_token() -> None:
    vocab = 30
    logits = torch.randn(4, vocab, generator=make_generator(5)) * 2
    params = [
        SamplingParams(temperature=0.4, top_k=3, presence_penalty=2.0, logprobs=5),
        SamplingParams(temperature=0.0, repetition_penalty=2.0, logprobs=0),
        SamplingParams(),
        SamplingParams(temperature=1.0, logprobs=2),
    ]
    outputs = [[int(logits[0].argmax())], [1, 2], [], []]
    md = _meta(params, vocab, outputs=outputs, default_generator=make_generator(0))
    out = Sampler()(logits, md)
    raw = torch.log_softmax(logits, dim=-1)
    assert out.logprobs[2] is None and out.ranks[2] is None
    for row, k in ((0, 5), (1, 0), (3, 2)):
        lp = out.logprobs[row]
        tok = out.sampled_token_ids[row]
        assert lp is not None and next(iter(lp)) == tok
        top = raw[row].topk(k).indices.tolist()
        assert set(lp) == {tok, *top}
        for t, v in lp.items():
            assert v == pytest.approx(raw[row, t].item(), abs=1e-5)
        assert out.ranks[row] == int((raw[row] > raw[row, tok]).sum()) + 1


def test_prompt_logprobs_match_log_softmax() -> None:
    vocab, pad = 20, 4
    logits = torch.randn(6, vocab + pad, generator=make_generator(8))
    logits[:, vocab:] = 50.0  # padding columns must not count
    targets = torch.randint(0, vocab, (6,), generator=make_generator(9))
    got = prompt_logprobs(logits, targets, 3, vocab_size=vocab)
    raw = torch.log_softmax(logits[:, :vocab], dim=-1)
    for pos, d in enumerate(got):
        tgt = int(targets[pos])
        assert next(iter(d)) == tgt
        assert set(d) == {tgt, *raw[pos].topk(3).indices.tolist()}
        for t, v in d.items():
            assert v == pytest.approx(raw[pos, t].item(), abs=1e-5)
    assert [set(d) for d in prompt_logprobs(logits[:, :vocab], targets, 0)] == [
        {int(t)} for t in targets
    ]


@pytest.mark.parametrize("temperature", [0.0, 1.0, 3.0])
def test_padded_vocab_columns_never_emitted(temperature: float) -> None:
    vocab, pad, n = 10, 6, 1000
    logits = torch.randn(n, vocab + pad, generator=make_generator(4))
    logits[:, vocab:] = 100.0
    md = _meta(
        [SamplingParams(temperature=temperature)] * n, vocab, default_generator=make_generator(1)
    )
    assert max(Sampler()(logits, md).sampled_token_ids) < vocab


def test_metadata_skips_unused_stages() -> None:
    md = _meta([SamplingParams(temperature=0.0), SamplingParams()], 16)
    assert not md.all_greedy and not md.all_random
    assert md.top_k is None and md.top_p is None and md.min_p is None
    assert md.output_counts is None and md.banned_rows is None and md.logprob_rows is None
    assert md.default_rows is not None and md.default_rows.tolist() == [1]


def test_build_rejects_mismatched_rows() -> None:
    with pytest.raises(ValueError, match="output_token_ids has 1 rows but params has 2"):
        build_sampling_metadata(
            [SamplingParams()] * 2, [[], []], [[]], [None, None], [(), ()], 8, CPU
        )
    md = _meta([SamplingParams()], 8)
    with pytest.raises(ValueError, match="does not fit"):
        Sampler()(torch.zeros(1, 4), md)


# ---- logit_bias, bad_words, allowed tokens (grammar bitmasks) ---------------------------
def _pack(allowed: list[list[int]], vocab: int) -> list[torch.Tensor]:
    """Reference packing: bit t % 32 of int32 word t // 32 (xgrammar's layout)."""
    words = (vocab + 31) // 32
    out = []
    for ids in allowed:
        bits = [0] * words
        for t in ids:
            bits[t // 32] |= 1 << (t % 32)
        out.append(torch.tensor([b - (1 << 32) if b >= 1 << 31 else b for b in bits],
                                dtype=torch.int32))
    return out


def test_unpack_bitmask_matches_reference() -> None:
    from membound.layers.sampling_metadata import unpack_bitmask

    vocab = 77
    allowed = [[0, 31, 32, 63, 76], list(range(vocab)), [5]]
    mask = unpack_bitmask(torch.stack(_pack(allowed, vocab)), vocab)
    for row, ids in zip(mask, allowed, strict=True):
        assert row.nonzero().flatten().tolist() == sorted(ids)


@pytest.mark.parametrize("temperature", [0.0, 1.0, 5.0])
def test_grammar_bitmask_and_allowed_token_ids_restrict_sampling(temperature: float) -> None:
    vocab = 64
    params = [SamplingParams(temperature=temperature, seed=1),
              SamplingParams(temperature=temperature, allowed_token_ids=[3, 40, 41]),
              SamplingParams(temperature=temperature, allowed_token_ids=[7, 8, 9])]
    masks = _pack([[1, 33, 60]], vocab) + [None] + _pack([[8, 9, 10]], vocab)
    n = len(params)
    md = build_sampling_metadata(params, [[]] * n, [[]] * n, [None] * n, [()] * n, vocab, CPU,
                                 token_bitmasks=masks)
    for _ in range(20):
        logits = torch.randn(n, vocab) * 10
        ids = Sampler()(logits, md).sampled_token_ids
        assert ids[0] in (1, 33, 60) and ids[1] in (3, 40, 41) and ids[2] in (8, 9)


def test_logit_bias_is_added() -> None:
    vocab = 16
    logits = torch.zeros(2, vocab)
    logits[:, 3] = 5.0
    params = [SamplingParams(temperature=0, logit_bias={7: 10.0}),
              SamplingParams(temperature=0, logit_bias={3: -100.0, 9: 1.0})]
    out = Sampler()(logits, _meta(params, vocab)).sampled_token_ids
    assert out == [7, 9]
    assert logits[0, 7] == 0.0  # the caller's logits are untouched


def test_bad_words_ban_single_and_multi_token_words() -> None:
    vocab = 16
    logits = torch.zeros(2, vocab)
    logits[:, 5] = 3.0
    logits[:, 6] = 2.0
    words = ((5,), (1, 2, 6))
    params = [SamplingParams(temperature=0, bad_words_token_ids=words)] * 2
    out = Sampler()(logits, _meta(params, vocab, outputs=[[0], [1, 2]])).sampled_token_ids
    # row 0: 5 banned, 6 allowed (its prefix 1, 2 is not there); row 1: both banned
    assert out[0] == 6 and out[1] not in (5, 6)
