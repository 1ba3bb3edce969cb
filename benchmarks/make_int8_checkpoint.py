"""Write an HF checkpoint's decoder linears as a compressed-tensors W8A8 int8 checkpoint:
per-channel symmetric int8 weights (``weight_scale`` [out, 1]), dynamic per-token int8
activations; embeddings, norms and the LM head stay as they are. What llm-compressor's
W8A8 scheme writes without SmoothQuant, so that engines which load such checkpoints (vLLM's
CPU build runs them on oneDNN's int8 GEMM) can be measured at int8 beside membound's
``--quantization int8`` (the same weights: membound quantizes per channel alike).

    python benchmarks/make_int8_checkpoint.py /work/cache/smollm2-hf /work/cache/smollm2-w8a8
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from membound.kernels.cpu_quant_linear import quantize_int8

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUANTIZATION_CONFIG = {
    "quant_method": "compressed-tensors", "format": "int-quantized",
    "quantization_status": "compressed",
    "config_groups": {"group_0": {
        "targets": ["Linear"],
        "weights": {"num_bits": 8, "type": "int", "strategy": "channel", "symmetric": True,
                    "dynamic": False},
        "input_activations": {"num_bits": 8, "type": "int", "strategy": "token",
                              "symmetric": True, "dynamic": True}}},
    "ignore": ["lm_head"],
}  # fmt: skip


def convert(src: Path, dst: Path) -> int:
    """Returns the number of linears quantized."""
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise SystemExit(f"no *.safetensors in {src}")
    dst.mkdir(parents=True, exist_ok=True)
    count = 0
    for f in files:
        out = {}
        for name, t in load_file(str(f)).items():
            module, _, suffix = name.rpartition(".")
            if suffix == "weight" and module.rsplit(".", 1)[-1] in LINEARS:
                q, s = quantize_int8(t.float())  # per output channel: s [out, 1]
                out[name], out[f"{module}.weight_scale"] = q, s.to(t.dtype)
                count += 1
            else:
                out[name] = t
        save_file(out, str(dst / f.name), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = QUANTIZATION_CONFIG
    (dst / "config.json").write_text(json.dumps(config, indent=1))
    for extra in src.iterdir():
        if extra.suffix != ".safetensors" and extra.name != "config.json" and extra.is_file():
            shutil.copy(extra, dst / extra.name)
    return count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="HF checkpoint folder (float safetensors)")
    p.add_argument("dst", type=Path, help="output folder")
    a = p.parse_args()
    print(f"{convert(a.src, a.dst)} linears written as int8 W8A8 to {a.dst}")


if __name__ == "__main__":
    main()
