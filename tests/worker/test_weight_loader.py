"""A bad checkpoint fails before anything is served, naming the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from membound import LLM
from membound.config import ConfigError, ModelConfig
from membound.worker.weight_loader import CheckpointError, load_model
from tiny_models import make_checkpoint


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "m", "llama_mha_untied")


def _rewrite(folder: Path, edit) -> None:  # type: ignore[no-untyped-def]
    f = folder / "model.safetensors"
    tensors = load_file(str(f))
    edit(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})


def test_pickle_checkpoint_refused(ckpt: Path) -> None:
    (ckpt / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, ckpt / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle checkpoints.*safetensors only"):
        LLM(str(ckpt))


def test_missing_tensor_named(ckpt: Path) -> None:
    _rewrite(ckpt, lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.1\.self_attn"):
        LLM(str(ckpt))


def test_unexpected_tensor_named(ckpt: Path) -> None:
    _rewrite(ckpt, lambda t: t.__setitem__("model.layers.0.mystery.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected tensors: model\.layers\.0\.mystery"):
        LLM(str(ckpt))


def test_wrong_shape_named(ckpt: Path) -> None:
    def edit(t: dict[str, torch.Tensor]) -> None:
        t["model.layers.0.mlp.up_proj.weight"] = torch.zeros(5, 64)

    _rewrite(ckpt, edit)
    with pytest.raises(CheckpointError, match=r"wrong shapes: model\.layers\.0\.mlp\.up_proj"):
        LLM(str(ckpt))


def test_unknown_architecture(ckpt: Path) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="GPTNeoXForCausalLM.*not supported.*LlamaForCausalLM"):
        LLM(str(ckpt))


def test_unsupported_rope_scaling(ckpt: Path) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="'yarn' is not supported"):
        ModelConfig.from_hf(ckpt)


def test_sharded_checkpoint_loads(tmp_path: Path, ckpt: Path) -> None:
    tensors = load_file(str(ckpt / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    out = tmp_path / "sharded"
    out.mkdir()
    for f in ("config.json", "generation_config.json"):
        (out / f).write_text((ckpt / f).read_text())
    weight_map = {}
    for i, chunk in enumerate((names[:half], names[half:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in chunk}, str(out / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in chunk})
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    cfg = ModelConfig.from_hf(out)
    a = load_model(cfg, str(out), dtype=torch.float32, device=torch.device("cpu"))
    b = load_model(cfg, str(ckpt), dtype=torch.float32, device=torch.device("cpu"))
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), na
    (out / fname).unlink()
    with pytest.raises(CheckpointError, match="shards that are missing"):
        load_model(cfg, str(out), dtype=torch.float32, device=torch.device("cpu"))


def test_dummy_weights_and_dtype(ckpt: Path) -> None:
    cfg = ModelConfig.from_hf(ckpt)
    m = load_model(cfg, None, dtype=torch.bfloat16, device=torch.device("cpu"),
                   load_format="dummy")
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    assert m.model.rotary_emb.cos_cache.dtype == torch.float32
