"""Per-rank weight loading without processes: a model built for rank r of TP=2 holds exactly
its slices of the TP=1 model's weights and reads only those from the safetensors file.
(Loading runs no collective, so a ParallelContext that only knows its rank suffices.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from membound.config import ModelConfig
from membound.distributed import ParallelContext
from membound.layers.checkpoint_tensor import LazyTensor
from membound.worker import weight_loader
from membound.worker.weight_loader import load_model
from tiny_models import make_checkpoint

CPU = torch.device("cpu")


def load(folder: Path, rank: int = 0, tp: int = 1, ep: bool = False) -> torch.nn.Module:
    ctx = ParallelContext(rank, tp, CPU)
    return load_model(ModelConfig.from_hf(folder), str(folder), dtype=torch.float32,
                      device=CPU, parallel=ctx, expert_parallel=ep)


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def test_dense_shards(tmp_path: Path) -> None:
    """GQA 4 heads / 2 KV heads, head_dim 16, vocab 321 (padded to 2 x 161)."""
    folder = make_checkpoint(tmp_path / "m", "mistral", seed=1, vocab_size=321)
    full = params(load(folder))
    for rank in (0, 1):
        p = params(load(folder, rank, 2))
        qkv, fq = p["model.layers.0.self_attn.qkv_proj.weight"], full[
            "model.layers.0.self_attn.qkv_proj.weight"]
        # [q 32 rows | k 16 | v 16] of this rank = its 2 query heads and its 1 KV head
        assert torch.equal(qkv[:32], fq[32 * rank : 32 * rank + 32])
        assert torch.equal(qkv[32:48], fq[64 + 16 * rank : 80 + 16 * rank])
        assert torch.equal(qkv[48:], fq[96 + 16 * rank : 112 + 16 * rank])
        o = p["model.layers.0.self_attn.o_proj.weight"]
        assert torch.equal(o, full["model.layers.0.self_attn.o_proj.weight"][:, 32 * rank :][:, :32])
        gu, fgu = p["model.layers.1.mlp.gate_up_proj.weight"], full[
            "model.layers.1.mlp.gate_up_proj.weight"]
        assert torch.equal(gu[:56], fgu[56 * rank : 56 * rank + 56])  # gate slice, 112 / 2
        assert torch.equal(gu[56:], fgu[112 + 56 * rank : 168 + 56 * rank])  # up slice
        down = p["model.layers.1.mlp.down_proj.weight"]
        assert torch.equal(down, full["model.layers.1.mlp.down_proj.weight"][:, 56 * rank :][:, :56])
        emb, femb = p["model.embed_tokens.weight"], full["model.embed_tokens.weight"]
        assert emb.shape == (161, 64)
        rows = femb[161 * rank : 161 * rank + 161]
        assert torch.equal(emb[: len(rows)], rows) and not emb[len(rows) :].any()
        assert torch.equal(p["lm_head.weight"][: len(rows)], full["lm_head.weight"][161 * rank :][:161])


def test_kv_head_replicated_past_tp(tmp_path: Path) -> None:
    """One KV head, TP=2: both ranks hold it (head_dim 24); q heads still split."""
    folder = make_checkpoint(tmp_path / "m", "llama_head_dim", seed=1)
    fq = params(load(folder))["model.layers.0.self_attn.qkv_proj.weight"]  # [96 | 24 | 24]
    for rank in (0, 1):
        qkv = params(load(folder, rank, 2))["model.layers.0.self_attn.qkv_proj.weight"]
        assert qkv.shape == (48 + 24 + 24, 64)
        assert torch.equal(qkv[:48], fq[48 * rank : 48 * rank + 48])
        assert torch.equal(qkv[48:], fq[96:])


@pytest.mark.parametrize("ep", [False, True])
def test_expert_shards(tmp_path: Path, ep: bool) -> None:
    """Sliced: every expert's gate/up rows and down columns split in two. Expert parallel:
    rank r holds experts 2r, 2r + 1 of 4 whole."""
    folder = make_checkpoint(tmp_path / "m", "qwen2_moe", seed=1)  # 4 experts, inter 32
    full = params(load(folder))
    w13, w2 = full["model.layers.0.mlp.experts.w13_weight"], full[
        "model.layers.0.mlp.experts.w2_weight"]
    for rank in (0, 1):
        p = params(load(folder, rank, 2, ep))
        g13, g2 = p["model.layers.0.mlp.experts.w13_weight"], p[
            "model.layers.0.mlp.experts.w2_weight"]
        if ep:
            assert torch.equal(g13, w13[2 * rank : 2 * rank + 2])
            assert torch.equal(g2, w2[2 * rank : 2 * rank + 2])
        else:
            assert torch.equal(g13[:, :16], w13[:, 16 * rank : 16 * rank + 16])  # gate
            assert torch.equal(g13[:, 16:], w13[:, 32 + 16 * rank : 48 + 16 * rank])  # up
            assert torch.equal(g2, w2[:, :, 16 * rank : 16 * rank + 16])
        shared = p["model.layers.0.mlp.shared_expert.down_proj.weight"]  # always sliced
        assert shared.shape == (64, 24)


@pytest.mark.parametrize("family", ["mistral", "qwen3_moe"])
def test_each_rank_reads_only_its_slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         family: str) -> None:  # fmt: skip
    folder = make_checkpoint(tmp_path / "m", family, seed=1)
    read: list[int] = []
    original = weight_loader._reader

    def counting(f, name):  # type: ignore[no-untyped-def]
        inner = original(f, name)

        def reader(slices):  # type: ignore[no-untyped-def]
            t = inner(slices)
            read.append(t.numel())
            return t

        return reader

    monkeypatch.setattr(weight_loader, "_reader", counting)
    model = load(folder)
    whole = sum(read)
    replicated = sum(p.numel() for n, p in model.named_parameters()
                     if "norm" in n or n.endswith("mlp.gate.weight"))  # norms, MoE routers
    read.clear()
    load(folder, 1, 2, ep=family.endswith("moe"))
    # everything but the replicated norms and routers is split in two
    assert sum(read) == (whole - replicated) / 2 + replicated
    assert isinstance(next(weight_loader.iterate_tensors(
        weight_loader._headers(weight_loader.find_safetensors_files(str(folder))), False))[1],
        LazyTensor)
