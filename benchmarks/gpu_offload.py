"""GPU benchmark (not yet run): decode tokens/s of an 8B-shaped dummy model with 0%, 50% and
90% of its layer weights offloaded to CPU memory, against the PCIe bound (offloaded bytes per
step / measured pinned host-to-device bandwidth).

Each engine is dropped and collected (``gc.collect`` + ``torch.cuda.empty_cache``) before the
next is built, so each plans its KV cache on an empty GPU. Also the optional ``offload``
phase of benchmarks/gpu_validate.py; results go to ``--out`` (``offload.json``, rewritten
after every run). Dry run: a tiny model on the CPU, where the engine ignores
``cpu_offload_gb`` (the weights already live in CPU memory): only the code path is checked.

    PYTHONPATH=src python benchmarks/gpu_offload.py --out "$OUT"
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_phase_env import h2d_bandwidth_gbs  # noqa: E402
from gpu_phases import GB, PhaseResult, Target, phase_args, write_model_folder  # noqa: E402


def decode_tok_s(t: Target, folder: Path, offload_gb: float, steps: int) -> tuple[float, int]:
    from membound.engine.engine_args import EngineArgs
    from membound.engine.llm_engine import LLMEngine
    from membound.sampling_params import SamplingParams

    eng = LLMEngine.from_engine_args(EngineArgs(
        model=str(folder), load_format="dummy", dtype=str(t.dtype).removeprefix("torch."),
        device=t.device.type, max_model_len=512, cpu_offload_gb=offload_gb,
        gpu_memory_utilization=0.5, skip_tokenizer_init=True))  # fmt: skip
    try:
        params = SamplingParams(temperature=0, max_tokens=steps + 8, ignore_eos=True)
        eng.add_request("0", list(range(1, 129)), params)
        for _ in range(8):  # prefill and warm-up
            eng.step()
        t.sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            eng.step()
        t.sync()
        return steps / (time.perf_counter() - t0), eng.info.memory_report.offloaded_bytes
    finally:
        del eng
        t.free()


def layer_bytes(cfg: dict[str, Any], elem: int) -> int:
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    return (h * (h + 2 * kv) + h * h + 3 * h * i + 2 * h) * elem


def main() -> int:
    _, t, res = phase_args("offload", __doc__)
    run(t, res)
    return res.exit_code()


def run(t: Target, res: PhaseResult) -> None:
    """Decode tok/s at each offloaded fraction, recorded in ``res`` as each completes."""
    steps = t.pick(32, 4)
    h2d = res.attempt("pinned H2D", lambda: h2d_bandwidth_gbs(t)) if t.cuda else None
    res.record("h2d_pinned_gbs", h2d or "not measured (no GPU)", f"pinned H2D {h2d} GB/s")
    cfg = t.model_config()
    one_layer = layer_bytes(cfg, torch.empty((), dtype=t.dtype).element_size())
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model_folder(Path(tmp) / "model", cfg)
        for frac in (0.0, 0.5, 0.9):
            gb = frac * cfg["num_hidden_layers"] * one_layer / 1024**3
            got = res.attempt(f"offload {frac}", lambda gb=gb: decode_tok_s(t, folder, gb, steps))
            if got is None:
                continue
            tok_s, off = got
            bound = h2d * GB / off if (off and h2d) else None
            res.record(f"fraction_{frac}",
                       {"offloaded_bytes": off, "decode_tok_s": tok_s, "pcie_bound_tok_s": bound},
                       f"{frac:.0%} offloaded ({off / 1e9:.1f} GB): {tok_s:.1f} tok/s"
                       + (f" (PCIe bound {bound:.1f})" if bound else ""))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
