"""Pre-quantized checkpoints in each format load; their dequantized weights are exactly what
the format stores, and logits match the float model within the format's tolerance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from quant_checkpoints import write_fake_quant, write_quantized

from membound import LLM, SamplingParams
from membound.config import ModelConfig
from membound.layers.attention.metadata import build_attention_metadata
from membound.layers.linear import Linear
from membound.layers.quantization import UnquantizedLinearMethod
from membound.worker.weight_loader import load_model
from tiny_models import load_hf

IDS = torch.tensor([5, 17, 42, 99, 7, 3, 250, 11, 9, 8, 100, 31, 64, 2, 77, 140])
CPU = torch.device("cpu")
# fused membound layer -> the checkpoint modules stacked in it, in order
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}

# format -> the method it loads as
WEIGHT_ONLY = {"awq": "awq", "gptq": "gptq", "mxfp4": "mxfp4", "nvfp4": "nvfp4"}
W8A8 = {"fp8": "fp8", "compressed-tensors-fp8": "fp8", "modelopt-fp8": "fp8",
        "compressed-tensors-int8": "int8"}
# relative logit error that quantizing the activations adds (E4M3 keeps 3 mantissa bits)
ACTIVATION_TOL = {"fp8": 0.12, "compressed-tensors-fp8": 0.12, "modelopt-fp8": 0.12,
                  "compressed-tensors-int8": 0.04}


def load(folder: Path) -> torch.nn.Module:
    return load_model(ModelConfig.from_hf(folder), str(folder), dtype=torch.float32, device=CPU)


@torch.no_grad()
def logits(model: torch.nn.Module, ids: torch.Tensor = IDS) -> torch.Tensor:
    md = build_attention_metadata([len(ids)], [len(ids)], None, 16, CPU)
    return model.compute_logits(model(ids, torch.arange(len(ids)), None, md))


def dequantized_by_checkpoint_name(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """membound's dequantized weights, split back into the checkpoint's modules."""
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, Linear):
            continue
        w = m.quant_method.dequantize(m)
        prefix, _, leaf = name.rpartition(".")
        pieces = FUSED.get(leaf, (leaf,))
        sizes = getattr(m, "output_sizes", (m.output_size,))
        for piece, part in zip(pieces, w.split(list(sizes)), strict=True):
            out[f"{prefix}.{piece}"] = part
    return out


@pytest.mark.parametrize("fmt", sorted({**WEIGHT_ONLY, **W8A8}))
def test_format_loads_and_matches(float_ckpt: Path, tmp_path: Path, fmt: str) -> None:
    expected = write_quantized(float_ckpt, tmp_path / "q", fmt)
    model = load(tmp_path / "q")
    assert model.config.quantization.method == {**WEIGHT_ONLY, **W8A8}[fmt]
    ours = dequantized_by_checkpoint_name(model)
    assert sorted(ours) == sorted(expected)
    for name, w in expected.items():  # stored values decode to exactly the format's weights
        torch.testing.assert_close(ours[name], w, rtol=1e-6, atol=1e-7, msg=name)
    got = logits(model)
    fake = logits(load(write_fake_quant(float_ckpt, tmp_path / "fake", expected)))
    if fmt in WEIGHT_ONLY:  # activations stay float: the fake-quant float model is exact
        torch.testing.assert_close(got, fake, rtol=1e-4, atol=1e-4)
    else:  # activations are quantized too (per token, or with the static input_scale)
        assert relative_error(got, fake) < ACTIVATION_TOL[fmt], fmt
    # against the float model: 4-bit weights on a tiny random model drift most
    assert relative_error(got, logits(load(float_ckpt))) < 0.45, fmt


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """RMS error over the RMS spread of the reference logits."""
    return ((got - ref).norm() / (ref - ref.mean()).norm()).item()


def test_weight_only_logits_match_transformers(float_ckpt: Path, tmp_path: Path) -> None:
    """GPTQ with act-order and v2 zero points: transformers on the dequantized weights is
    the oracle (activation order only changes which rows share a scale)."""
    perm = torch.randperm(128, generator=torch.Generator().manual_seed(0))
    qcfg = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True,
            "sym": False, "checkpoint_format": "gptq_v2", "modules_to_not_convert": ["down_proj"]}
    expected = write_quantized(float_ckpt, tmp_path / "q", "gptq", qconfig=qcfg,
                               skip=("down_proj",), sym=False, v2=True, perm=perm)
    model = load(tmp_path / "q")
    qkv = model.model.layers[0].self_attn.qkv_proj
    assert qkv.perm is not None and not torch.equal(qkv.perm.long(), torch.arange(128))
    assert isinstance(model.model.layers[0].mlp.down_proj.quant_method, UnquantizedLinearMethod)
    hf = load_hf(write_fake_quant(float_ckpt, tmp_path / "fake", expected))
    with torch.no_grad():
        theirs = hf(IDS[None]).logits[0]
    torch.testing.assert_close(logits(model), theirs, rtol=1e-4, atol=1e-4)


def test_gptq_v1_zero_offset(float_ckpt: Path, tmp_path: Path) -> None:
    """v1 files store zero - 1: reading them as v2 would shift every weight by one step."""
    expected = write_quantized(float_ckpt, tmp_path / "q", "gptq", sym=False)
    ours = dequantized_by_checkpoint_name(load(tmp_path / "q"))
    name = "model.layers.1.mlp.up_proj"
    torch.testing.assert_close(ours[name], expected[name], rtol=1e-6, atol=1e-7)


def test_quantized_checkpoint_generates(float_ckpt: Path, tmp_path: Path) -> None:
    write_quantized(float_ckpt, tmp_path / "q", "awq")
    llm = LLM(str(tmp_path / "q"), block_size=4)
    assert llm.llm_engine.config.quantization == "awq"
    out = llm.generate([[5, 17, 42]], SamplingParams(temperature=0, max_tokens=4,
                                                     ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4
