"""Write tiny quantized checkpoints from a float one, following each format's documented
layout, with code independent of membound's loaders (per-nibble loops as AutoAWQ / AutoGPTQ
pack, table look-ups for FP4), plus the dequantized weights the format stands for.

``write_quantized(src, dst, fmt, **options)`` -> {checkpoint module name: W [out, in] float32},
and ``write_fake_quant(src, dst, weights)`` saves a float checkpoint holding those dequantized
weights: transformers on it is the oracle for weight-only formats.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]

Tensors = dict[str, torch.Tensor]


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 holding 32-bit patterns -> int32 with the same bits."""
    words = words & 0xFFFFFFFF
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def pack_cols(values: torch.Tensor, order: list[int]) -> torch.Tensor:
    """[R, C] nibbles -> [R, C // 8] int32; nibble i of word c holds column 8c + order[i]."""
    r, c = values.shape
    out = torch.zeros(r, c // 8, dtype=torch.int64)
    for col in range(c // 8):
        for i in range(8):
            out[:, col] |= values[:, col * 8 + order[i]].to(torch.int64) << (4 * i)
    return _to_int32(out)


def pack_rows(values: torch.Tensor) -> torch.Tensor:
    """[R, C] nibbles -> [R // 8, C] int32; nibble j of word r holds row 8r + j (GPTQ)."""
    r, c = values.shape
    out = torch.zeros(r // 8, c, dtype=torch.int64)
    for row in range(r // 8):
        for j in range(8):
            out[row] |= values[row * 8 + j].to(torch.int64) << (4 * j)
    return _to_int32(out)


# ---- per-format writers: float W [out, in] -> (tensors by suffix, dequantized W) -----------


def awq(w: torch.Tensor, group_size: int = 64) -> tuple[Tensors, torch.Tensor]:
    out, k = w.shape
    wt = w.t().reshape(k // group_size, group_size, out)  # groups along in_features
    wmax, wmin = wt.amax(1), wt.amin(1)  # [groups, out]
    scales = ((wmax - wmin) / 15).clamp(min=1e-5).half()
    zeros = (-torch.round(wmin / scales.float())).clamp(0, 15)
    q = (torch.round(wt / scales.float()[:, None]) + zeros[:, None]).clamp(0, 15)
    deq = ((q - zeros[:, None]) * scales.float()[:, None]).reshape(k, out).t()
    tensors = {
        "qweight": pack_cols(q.reshape(k, out).to(torch.int64), AWQ_ORDER),
        "qzeros": pack_cols(zeros.to(torch.int64), AWQ_ORDER),
        "scales": scales,
    }
    return tensors, deq


def gptq(
    w: torch.Tensor, group_size: int = 32, sym: bool = True, v2: bool = False,
    perm: torch.Tensor | None = None,
) -> tuple[Tensors, torch.Tensor]:
    """Groups run over input rows in ``perm`` order (act-order); g_idx[perm[i]] = i // G."""
    out, k = w.shape
    perm = torch.arange(k) if perm is None else perm
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[perm] = (torch.arange(k) // group_size).to(torch.int32)
    wt = w.t()  # [in, out]
    groups = k // group_size
    scales, zeros = torch.empty(groups, out), torch.empty(groups, out)
    for gi in range(groups):
        rows = wt[perm[gi * group_size:(gi + 1) * group_size]]
        if sym:
            amax = rows.abs().amax(0).clamp(min=1e-5)
            scales[gi], zeros[gi] = 2 * amax / 15, 8.0
        else:
            lo, hi = rows.amin(0), rows.amax(0)
            scales[gi] = ((hi - lo) / 15).clamp(min=1e-5)
            zeros[gi] = (-torch.round(lo / scales[gi])).clamp(0 if v2 else 1, 15)
    scales = scales.half().float()
    s, z = scales[g_idx.long()], zeros[g_idx.long()]  # per input row
    q = (torch.round(wt / s) + z).clamp(0, 15)
    deq = ((q - z) * s).t()
    stored_zeros = zeros if v2 else zeros - 1  # v1 stores zero - 1
    tensors = {
        "qweight": pack_rows(q.to(torch.int64)),
        "qzeros": pack_cols(stored_zeros.to(torch.int64), list(range(8))),
        "scales": scales.half(),
        "g_idx": g_idx,
    }
    return tensors, deq


def fp8(w: torch.Tensor, per_channel: bool, input_scale: float | None) -> tuple[Tensors, torch.Tensor]:
    amax = w.abs().amax(1, keepdim=True) if per_channel else w.abs().amax()
    scale = (amax / 448.0).float()
    q = (w / scale).to(torch.float8_e4m3fn)
    tensors: Tensors = {"weight": q, "weight_scale": scale if per_channel else scale.reshape(())}
    if input_scale is not None:
        tensors["input_scale"] = torch.tensor(input_scale, dtype=torch.float32)
    return tensors, q.float() * scale


def int8(w: torch.Tensor) -> tuple[Tensors, torch.Tensor]:
    scale = w.abs().amax(1, keepdim=True) / 127
    q = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
    return {"weight": q, "weight_scale": scale}, q.float() * scale


def _e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    table = torch.tensor(E2M1)
    return (v[..., None] - table).abs().argmin(-1).to(torch.uint8)  # nearest code


def _pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)


def mxfp4(w: torch.Tensor) -> tuple[Tensors, torch.Tensor]:
    out, k = w.shape
    blocks = w.reshape(out, k // 32, 32)
    exp = torch.floor(torch.log2(blocks.abs().amax(-1))) - 2  # E8M0 shared exponent
    codes = _e2m1_codes((blocks / torch.exp2(exp)[..., None]).clamp(-6, 6))
    deq = torch.tensor(E2M1)[codes.long()] * torch.exp2(exp)[..., None]
    tensors = {
        "weight_blocks": _pack_fp4(codes),  # [out, in // 32, 16]
        "weight_scales": (exp + 127).to(torch.uint8),
    }
    return tensors, deq.reshape(out, k)


def nvfp4(w: torch.Tensor) -> tuple[Tensors, torch.Tensor]:
    out, k = w.shape
    blocks = w.reshape(out, k // 16, 16)
    scale_2 = w.abs().amax() / (6 * 448)
    bscale = (blocks.abs().amax(-1) / 6 / scale_2).to(torch.float8_e4m3fn)
    eff = bscale.float() * scale_2
    codes = _e2m1_codes((blocks / eff[..., None]).clamp(-6, 6))
    deq = torch.tensor(E2M1)[codes.long()] * eff[..., None]
    tensors = {
        "weight": _pack_fp4(codes).reshape(out, k // 2),
        "weight_scale": bscale,
        "weight_scale_2": scale_2.reshape(()).float(),
        "input_scale": torch.tensor(1.0),
    }
    return tensors, deq.reshape(out, k)


# format name -> (tensor writer, quantization_config, config file)
FORMATS: dict[str, tuple[Callable[..., tuple[Tensors, torch.Tensor]], dict[str, Any], str]] = {
    "awq": (awq, {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True,
                  "version": "gemm"}, "config"),
    "gptq": (gptq, {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False,
                    "sym": True, "checkpoint_format": "gptq"}, "config"),
    "fp8": (lambda w: fp8(w, False, 0.05),
            {"quant_method": "fp8", "activation_scheme": "static"}, "config"),
    "compressed-tensors-fp8": (lambda w: fp8(w, True, None), {
        "quant_method": "compressed-tensors", "format": "float-quantized",
        "config_groups": {"group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True,
                        "dynamic": False},
            "input_activations": {"num_bits": 8, "type": "float", "strategy": "token",
                                  "dynamic": True, "symmetric": True}}},
        "ignore": ["lm_head"], "quantization_status": "compressed"}, "config"),
    "compressed-tensors-int8": (int8, {
        "quant_method": "compressed-tensors", "format": "int-quantized",
        "config_groups": {"group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 8, "type": "int", "strategy": "channel", "symmetric": True},
            "input_activations": {"num_bits": 8, "type": "int", "strategy": "token",
                                  "dynamic": True}}},
        "ignore": ["lm_head"]}, "config"),
    "modelopt-fp8": (lambda w: fp8(w, False, 0.05), {
        "producer": {"name": "modelopt"},
        "quantization": {"quant_algo": "FP8", "exclude_modules": ["lm_head"]}}, "hf_quant"),
    "mxfp4": (mxfp4, {"quant_method": "mxfp4", "modules_to_not_convert": ["lm_head"]}, "config"),
    "nvfp4": (nvfp4, {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
                      "exclude_modules": ["lm_head"]}, "config"),
}


def write_quantized(
    src: Path, dst: Path, fmt: str, skip: tuple[str, ...] = (), qconfig: dict | None = None,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """Quantize every decoder linear of ``src`` into ``dst`` in format ``fmt``; modules whose
    name contains an entry of ``skip`` stay float. Returns the dequantized weights."""
    writer, default_qconfig, where = FORMATS[fmt]
    tensors = load_file(str(src / "model.safetensors"))
    out: Tensors = {}
    dequantized: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        module, _, suffix = name.rpartition(".")
        quantize = suffix == "weight" and module.rsplit(".", 1)[-1] in LINEARS
        if not quantize or any(s in module for s in skip):
            out[name] = t
            continue
        parts, deq = writer(t.float(), **options)
        out.update({f"{module}.{k}": v.contiguous() for k, v in parts.items()})
        dequantized[module] = deq.float()
    dst.mkdir(parents=True, exist_ok=True)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    qconfig = qconfig or default_qconfig
    if where == "config":
        config["quantization_config"] = qconfig
    else:
        (dst / "hf_quant_config.json").write_text(json.dumps(qconfig))
    (dst / "config.json").write_text(json.dumps(config))
    for extra in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        if (src / extra).exists():
            shutil.copy(src / extra, dst / extra)
    return dequantized


def write_fake_quant(src: Path, dst: Path, weights: dict[str, torch.Tensor]) -> Path:
    """A float checkpoint like ``src`` whose linears hold ``weights`` (dequantized)."""
    tensors = load_file(str(src / "model.safetensors"))
    for module, w in weights.items():
        tensors[f"{module}.weight"] = w.to(tensors[f"{module}.weight"].dtype)
    dst.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(src / "config.json", dst / "config.json")
    return dst
