"""GPU benchmark (not yet run): decode tokens/s of an 8B-shaped dummy model with 0%, 50% and
90% of its layer weights offloaded to CPU memory, against the PCIe bound
(offloaded bytes per step / measured host-to-device bandwidth).

    PYTHONPATH=src python benchmarks/gpu_offload.py --output-json benchmarks/results/gpu_offload.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "max_position_embeddings": 8192, "rope_theta": 500000.0,
    "torch_dtype": "bfloat16", "tie_word_embeddings": False,
}


def h2d_bandwidth(nbytes: int = 1 << 30) -> float:
    """Pinned host-to-device copy bandwidth in bytes/s."""
    host = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    return 5 * nbytes / (time.perf_counter() - t0)


def decode_tok_s(folder: Path, offload_gb: float, steps: int) -> tuple[float, int]:
    from membound.engine.engine_args import EngineArgs
    from membound.engine.llm_engine import LLMEngine
    from membound.sampling_params import SamplingParams

    eng = LLMEngine.from_engine_args(EngineArgs(
        model=str(folder), load_format="dummy", max_model_len=2048, cpu_offload_gb=offload_gb,
        gpu_memory_utilization=0.5))
    eng.add_request("0", list(range(1, 129)), SamplingParams(temperature=0, max_tokens=steps + 8,
                                                             ignore_eos=True))
    for _ in range(8):  # prefill and warm-up
        eng.step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        eng.step()
    torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0), eng.memory_report.offloaded_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--output-json", default=None)
    args = ap.parse_args()
    bw = h2d_bandwidth()
    layer_gib = 218_112_000 * 2 / 1024**3  # one Llama-3-8B decoder layer in bf16
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text(json.dumps(LLAMA3_8B))
        for frac in (0.0, 0.5, 0.9):
            gb = frac * 32 * layer_gib
            tok_s, off = decode_tok_s(folder, gb, args.steps)
            bound = bw / off if off else None
            results.append({"fraction": frac, "offloaded_bytes": off, "decode_tok_s": tok_s,
                            "pcie_bound_tok_s": bound})
            print(json.dumps(results[-1]), flush=True)
    report = {"benchmark": "gpu_offload", "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "h2d_bytes_per_s": bw, "results": results}
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
