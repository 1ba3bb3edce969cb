"""quantization="fp8" | "int8" | "int4" | "mxfp4" | "nvfp4" on a float checkpoint: weights are
quantized shard by shard while loading, stay packed in memory, and stay close to the float
model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_quant_formats import load, logits, relative_error

from membound import LLM, SamplingParams
from membound.config import ModelConfig, resolve_quantization
from membound.layers.linear import Linear
from membound.worker.memory_profiler import weights_bytes
from membound.worker.weight_loader import load_model

CPU = torch.device("cpu")
# method -> (largest relative weight error, largest relative logit error, bytes per weight
# with the scales: fp32 per row, int4 fp32 scale + zero per 128, E8M0 per 32, E4M3 per 16)
BOUNDS = {
    "fp8": (0.04, 0.2, 1 + 4 / 128),
    "int8": (0.01, 0.05, 1 + 4 / 128),
    "int4": (0.12, 0.45, 0.5 + 5 / 128),
    "mxfp4": (0.14, 0.45, 0.5 + 1 / 32),
    "nvfp4": (0.12, 0.45, 0.5 + 1 / 16 + 4 / 128),
}


def quantized_config(folder: Path, method: str) -> ModelConfig:
    cfg = ModelConfig.from_hf(folder)
    return replace(cfg, quantization=resolve_quantization(cfg.quantization, method))


@pytest.mark.parametrize("method", sorted(BOUNDS))
def test_quantize_while_loading(float_ckpt: Path, method: str) -> None:
    w_bound, logit_bound, bytes_per_weight = BOUNDS[method]
    base = load(float_ckpt)
    model = load_model(quantized_config(float_ckpt, method), str(float_ckpt),
                       dtype=torch.float32, device=CPU)
    floats = dict(base.named_modules())
    for name, layer in model.named_modules():
        if not isinstance(layer, Linear):
            continue
        assert layer.quant_method.name == method
        w = floats[name].weight
        err = ((layer.quant_method.dequantize(layer) - w).norm() / w.norm()).item()
        assert err < w_bound, (name, err)
        packed = sum(p.numel() * p.element_size() for n, p in layer.named_parameters()
                     if n != "bias")
        assert packed <= w.numel() * bytes_per_weight, name  # weights stay packed
    assert relative_error(logits(model), logits(base)) < logit_bound
    assert weights_bytes(model) < weights_bytes(base)


def test_dummy_weights_with_quantization(float_ckpt: Path) -> None:
    """load_format="dummy" (benchmarks) quantizes random weights the same way."""
    for method in ("fp8", "int4", "nvfp4"):
        model = load_model(quantized_config(float_ckpt, method), None, dtype=torch.float32,
                           device=CPU, load_format="dummy")
        out = logits(model)
        assert torch.isfinite(out).all() and out.std() > 0


def test_llm_option_and_greedy_agreement(float_ckpt: Path) -> None:
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    prompt = [[5, 17, 42, 99, 7, 3]]
    ref = LLM(str(float_ckpt), block_size=4, dtype="float32").generate(prompt, params, use_tqdm=False)
    llm = LLM(str(float_ckpt), block_size=4, quantization="int8", dtype="float32")
    assert llm.llm_engine.config.quantization == "int8"
    out = llm.generate(prompt, params, use_tqdm=False)
    assert out[0].outputs[0].token_ids[:2] == ref[0].outputs[0].token_ids[:2]


def test_triton_backend_decode_matches_reference(float_ckpt: Path) -> None:
    """With the Triton backend, small batches go through the int4 kernel (interpreted on
    CPU); the result matches the dequantize + matmul path."""
    pytest.importorskip("triton")
    from membound.kernels.contract import TRITON_OPS

    def down_proj(ops: object) -> torch.nn.Module:
        model = load_model(quantized_config(float_ckpt, "int4"), str(float_ckpt),
                           dtype=torch.float32, device=CPU, ops=ops)  # type: ignore[arg-type]
        return model.model.layers[0].mlp.down_proj

    ref_layer, layer = down_proj(None), down_proj(TRITON_OPS)
    x = torch.randn(3, layer.input_size, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(layer(x), ref_layer(x), rtol=1e-4, atol=1e-4)
