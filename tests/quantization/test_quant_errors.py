"""Bad quantized checkpoints and options fail before anything loads, naming the problem."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from quant_checkpoints import write_quantized
from safetensors.torch import load_file, save_file
from test_quant_formats import load

from membound import LLM
from membound.config import ConfigError, ModelConfig, QuantizationConfig, resolve_quantization
from membound.engine.engine_args import EngineArgs
from membound.layers.quantization import QuantizedWeightError
from membound.worker.weight_loader import CheckpointError


def edit_tensors(folder: Path, edit: Any) -> None:
    f = folder / "model.safetensors"
    tensors = load_file(str(f))
    edit(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})


def edit_qconfig(folder: Path, **changes: Any) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"].update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_missing_scales_named(float_ckpt: Path, tmp_path: Path) -> None:
    write_quantized(float_ckpt, tmp_path / "q", "awq")
    edit_tensors(tmp_path / "q", lambda t: t.pop("model.layers.1.mlp.up_proj.scales"))
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.1\.mlp\."
                                              r"gate_up_proj\.scales#1"):
        load(tmp_path / "q")


def test_group_size_mismatch_is_a_shape_error(float_ckpt: Path, tmp_path: Path) -> None:
    write_quantized(float_ckpt, tmp_path / "q", "awq")  # written with groups of 64
    edit_qconfig(tmp_path / "q", group_size=32)
    with pytest.raises(CheckpointError, match=r"wrong shapes: .*qzeros \(2, \d+\) "
                                              r"\(expected \(4, \d+\)\)"):
        load(tmp_path / "q")


def test_group_size_must_divide_in_features(float_ckpt: Path, tmp_path: Path) -> None:
    write_quantized(float_ckpt, tmp_path / "q", "gptq")
    edit_qconfig(tmp_path / "q", group_size=96)
    with pytest.raises(ConfigError, match=r"qkv_proj: in_features 128 is not a multiple of 96"):
        load(tmp_path / "q")


def test_wrong_dtype_named(float_ckpt: Path, tmp_path: Path) -> None:
    write_quantized(float_ckpt, tmp_path / "q", "fp8")
    name = "model.layers.0.self_attn.o_proj.weight"
    edit_tensors(tmp_path / "q", lambda t: t.__setitem__(name, t[name].to(torch.bfloat16)))
    with pytest.raises(CheckpointError, match=r"wrong dtypes: .*o_proj\.weight BF16 "
                                              r"\(expected fp8\)"):
        load(tmp_path / "q")


def test_static_fp8_needs_input_scales(float_ckpt: Path, tmp_path: Path) -> None:
    write_quantized(float_ckpt, tmp_path / "q", "fp8")
    edit_tensors(tmp_path / "q", lambda t: t.pop("model.layers.0.mlp.down_proj.input_scale"))
    with pytest.raises(CheckpointError, match=r"missing tensors: .*down_proj\.input_scale"):
        load(tmp_path / "q")


def test_fused_shards_need_one_g_idx(float_ckpt: Path, tmp_path: Path) -> None:
    write_quantized(float_ckpt, tmp_path / "q", "gptq")
    name = "model.layers.0.self_attn.k_proj.g_idx"
    edit_tensors(tmp_path / "q", lambda t: t.__setitem__(name, t[name].flip(0).contiguous()))
    with pytest.raises(QuantizedWeightError, match="different g_idx"):
        load(tmp_path / "q")


def test_partially_ignored_fused_layer(float_ckpt: Path, tmp_path: Path) -> None:
    write_quantized(float_ckpt, tmp_path / "q", "awq")
    edit_qconfig(tmp_path / "q", modules_to_not_convert=["k_proj"])
    with pytest.raises(ConfigError, match="only some of them unquantized"):
        load(tmp_path / "q")


@pytest.mark.parametrize("raw,match", [
    ({"quant_method": "bitsandbytes"}, "quant_method='bitsandbytes'.*does not support"),
    ({"quant_method": "awq", "version": "gemv"}, "GEMM layout"),
    ({"quant_method": "awq", "bits": 3}, "bits=3"),
    ({"quant_method": "gptq", "checkpoint_format": "marlin"}, "checkpoint_format 'marlin'"),
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "block-wise"),
    ({"quant_method": "modelopt", "quant_algo": "W4A8_AWQ"}, "W4A8_AWQ"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {
        "g": {"weights": {"num_bits": 4, "type": "int", "strategy": "group"}}}}, "4-bit int"),
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {
        "weights": {"num_bits": 8, "type": "int", "strategy": "channel"},
        "input_activations": {"num_bits": 8, "type": "int", "strategy": "group",
                              "group_size": 128, "dynamic": True}}}},
     "dynamic input_activations strategy='group'.*per token"),
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {
        "weights": {"num_bits": 8, "type": "float", "strategy": "tensor"},
        "input_activations": {"num_bits": 8, "type": "float", "strategy": "token",
                              "dynamic": False}}}},
     "static input_activations strategy='token'.*per tensor"),
])
def test_unsupported_quantization_configs(raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        QuantizationConfig.from_hf(raw)


def test_parsed_configs() -> None:
    gptq = QuantizationConfig.from_hf({"quant_method": "gptq", "bits": 4, "group_size": -1,
                                       "desc_act": True, "format": "gptq_v2"})
    assert (gptq.group_size, gptq.desc_act, gptq.checkpoint_format) == (None, True, "gptq_v2")
    ct = QuantizationConfig.from_hf({"quant_method": "compressed-tensors", "config_groups": {
        "g": {"weights": {"num_bits": 8, "type": "float", "strategy": "tensor"},
              "input_activations": {"num_bits": 8, "type": "float", "dynamic": False}}},
        "ignore": ["lm_head", "re:.*down_proj"]})
    assert (ct.method, ct.activation_scheme) == ("fp8", "static")
    assert ct.is_ignored("model.layers.3.mlp.down_proj") and not ct.is_ignored("model.up_proj")
    mx = QuantizationConfig.from_hf({"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn"]})
    assert mx.is_ignored("model.layers.7.self_attn.q_proj") and mx.group_size == 32


def test_requested_quantization_rules() -> None:
    awq = QuantizationConfig.from_hf({"quant_method": "awq"})
    assert resolve_quantization(awq, None) is awq and resolve_quantization(awq, "AWQ") is awq
    with pytest.raises(ConfigError, match="already quantized.*cannot be re-quantized to fp8"):
        resolve_quantization(awq, "fp8")
    with pytest.raises(ConfigError, match="use quantization='int4'"):
        resolve_quantization(None, "gptq")
    with pytest.raises(ConfigError, match="'int3' is not supported"):
        resolve_quantization(None, "int3")
    assert resolve_quantization(None, "nvfp4").group_size == 16


def test_engine_options(float_ckpt: Path) -> None:
    parser = __import__("argparse").ArgumentParser()
    EngineArgs.add_cli_args(parser)
    args = EngineArgs.from_cli_args(parser.parse_args(["--quantization", "FP8"]))
    assert args.quantization == "fp8"
    cfg = EngineArgs(model=str(float_ckpt), quantization="fp8").create_engine_config()
    assert cfg.quantization == "fp8" and cfg.model_config.quantization.checkpoint_format == "float"
    assert ModelConfig.from_hf(float_ckpt).quantization is None
    assert replace(cfg, quantization=None).quantization == "fp8"  # taken from the model config
    with pytest.raises(ConfigError, match="does not match the model config"):
        replace(cfg, quantization="int8")
    with pytest.raises(ConfigError, match=r"kv_cache_dtype='fp8_e5m2' is not one of"):
        LLM(str(float_ckpt), kv_cache_dtype="fp8_e5m2")
