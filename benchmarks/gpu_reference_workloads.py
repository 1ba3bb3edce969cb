"""GPU benchmark: the published workloads of shared/reference/hardware-and-models.md.

STATUS: NOT YET RUN. No result of this script has been committed; quote no figure from it
until its JSON and log are in benchmarks/results/ (DESIGN.md, "Benchmark results are
evidence").

Workloads (random weights, ``--load-format dummy``, random prompt token ids, ``ignore_eos``):

| name                        | command          | model shape  | precision | in / out  | published            |
|-----------------------------|------------------|--------------|-----------|-----------|----------------------|
| llama3-8b-bf16-128x128      | bench throughput | Llama-3-8B   | bf16      | 128/128   | H100 FP16 15,572 tok/s (TRT-LLM) |
| llama3-8b-bf16-1000x1000    | bench throughput | Llama-3-8B   | bf16      | 1000/1000 | H100 FP16 7,055 tok/s |
| llama3-8b-fp8-128x128       | bench throughput | Llama-3-8B   | fp8       | 128/128   | H100 26,933; H200 27,779 tok/s |
| llama3-8b-fp8-1000x1000     | bench throughput | Llama-3-8B   | fp8       | 1000/1000 | H100 14,108; H200 16,415 tok/s |
| llama3-70b-fp8-h200-128x128 | bench throughput | Llama-3-70B  | fp8       | 128/128   | one H200 3,803 - 3,897 tok/s |
| llama3-8b-bf16-batch1       | bench latency    | Llama-3-8B   | bf16      | 128/128   | H100 SXM 6.0 - 7.5 ms/token (MLC, SGLang, vLLM) |

The model folder holds only the preset's ``config.json`` (``membound.planner.presets``, the
same shapes the planner uses); weights are random, which is what throughput and latency
depend on. FP8 workloads need the engine's FP8 support (an ``EngineArgs.quantization``
field); until it exists they are reported as skipped, never run in another precision.

Each run writes ``benchmarks/results/<workload>-<gpu>.json`` (the ``bench`` JSON plus a
``reference`` entry naming the published figure) and ``.log`` (the full console output).

    python benchmarks/gpu_reference_workloads.py --list
    python benchmarks/gpu_reference_workloads.py --dry-run all
    python benchmarks/gpu_reference_workloads.py llama3-8b-bf16-batch1 llama3-8b-bf16-128x128
    membound bench report benchmarks/results/*.json --plot benchmarks/results/report.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Workload:
    name: str
    command: str  # "throughput" or "latency"
    preset: str  # membound.planner.presets name
    precision: str  # "bf16" or "fp8"
    input_len: int
    output_len: int
    options: tuple[str, ...]
    reference: str  # the published figure it reproduces
    gpu_pattern: str = ""  # regex the device name must match ("" = any GPU)


WORKLOADS: tuple[Workload, ...] = (
    Workload("llama3-8b-bf16-128x128", "throughput", "llama-3-8b", "bf16", 128, 128,
             ("--num-prompts", "4096", "--max-num-seqs", "1024", "--max-num-batched-tokens", "8192"),
             "TensorRT-LLM, Llama-3.1-8B FP16, one H100: 15,572 output tok/s"),
    Workload("llama3-8b-bf16-1000x1000", "throughput", "llama-3-8b", "bf16", 1000, 1000,
             ("--num-prompts", "1024", "--max-num-seqs", "512", "--max-num-batched-tokens", "8192"),
             "TensorRT-LLM, Llama-3.1-8B FP16, one H100: 7,055 output tok/s"),
    Workload("llama3-8b-fp8-128x128", "throughput", "llama-3-8b", "fp8", 128, 128,
             ("--num-prompts", "4096", "--max-num-seqs", "1024", "--max-num-batched-tokens", "8192"),
             "TensorRT-LLM, Llama-3.1-8B FP8: H100 26,933, H200 27,779 output tok/s"),
    Workload("llama3-8b-fp8-1000x1000", "throughput", "llama-3-8b", "fp8", 1000, 1000,
             ("--num-prompts", "1024", "--max-num-seqs", "512", "--max-num-batched-tokens", "8192"),
             "TensorRT-LLM, Llama-3.1-8B FP8: H100 14,108, H200 16,415 output tok/s"),
    Workload("llama3-70b-fp8-h200-128x128", "throughput", "llama-3-70b", "fp8", 128, 128,
             ("--num-prompts", "2048", "--max-num-seqs", "512", "--max-num-batched-tokens", "8192",
              "--max-model-len", "2048"),
             "TensorRT-LLM, Llama-3.3-70B FP8, one H200: 3,803 (v1.0) - 3,897 (v0.14) output tok/s",
             gpu_pattern=r"h200"),
    Workload("llama3-8b-bf16-batch1", "latency", "llama-3-8b", "bf16", 128, 128,
             ("--batch-size", "1", "--num-iters", "10", "--num-iters-warmup", "2"),
             "Llama-3-8B fp16 batch 1 on one H100 SXM: 6.0 (MLC), 6.6 (SGLang), 7.5 (vLLM) ms/token"),
)  # fmt: skip


def write_model_folder(preset: str, folder: Path) -> Path:
    """A checkpoint folder holding only the preset's config.json (weights come from dummy)."""
    from membound.planner.presets import PRESET_CONFIGS

    folder = folder / preset
    folder.mkdir(parents=True, exist_ok=True)
    config = {**PRESET_CONFIGS[preset], "bos_token_id": 128000, "eos_token_id": 128001}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def fp8_flags() -> tuple[str, ...] | None:
    """Engine flags for FP8 weights (and FP8 KV where supported); None: not supported yet."""
    from membound.engine.engine_args import EngineArgs

    names = {f.name for f in dataclasses.fields(EngineArgs)}
    if "quantization" not in names:
        return None
    flags: tuple[str, ...] = ("--quantization", "fp8")
    if "kv_cache_dtype" in names:
        flags += ("--kv-cache-dtype", "fp8")
    return flags


def device_slug(name: str) -> str:
    """ "NVIDIA H100 80GB HBM3" -> "h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")


def bench_command(w: Workload, model: Path, json_path: Path) -> list[str] | None:
    """The ``membound bench`` command line for a workload, or None if it cannot run yet."""
    precision: tuple[str, ...] = ("--dtype", "bfloat16")
    if w.precision == "fp8":
        flags = fp8_flags()
        if flags is None:
            return None
        precision += flags
    return ["membound", "bench", w.command, str(model), "--load-format", "dummy", *precision,
            "--input-len", str(w.input_len), "--output-len", str(w.output_len), *w.options,
            "--output-json", str(json_path), "--plot", str(json_path.with_suffix(".png"))]  # fmt: skip


def run_workload(w: Workload, gpu: str, model_root: Path, dry_run: bool) -> str:
    """Run one workload; returns a one-line status."""
    if w.gpu_pattern and not re.search(w.gpu_pattern, gpu.lower()):
        return f"{w.name}: skipped, needs a GPU matching {w.gpu_pattern!r} (this is {gpu})"
    out = RESULTS / f"{w.name}-{device_slug(gpu)}.json"
    cmd = bench_command(w, write_model_folder(w.preset, model_root), out)
    if cmd is None:
        return f"{w.name}: skipped, the engine has no FP8 support yet (EngineArgs.quantization)"
    if dry_run:
        return f"{w.name}: {shlex.join(cmd)}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".log")
    with open(log, "w", encoding="utf-8") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not out.exists():
        return f"{w.name}: FAILED (exit {proc.returncode}); see {log}"
    doc: dict[str, Any] = json.loads(out.read_text())
    doc["reference"] = {"workload": w.name, "published": w.reference,
                        "source": "shared/reference/hardware-and-models.md"}  # fmt: skip
    out.write_text(json.dumps(doc, indent=2) + "\n")
    f = doc["figures"]
    figure = (f"{f['tpot_ms_mean']:.2f} ms/token" if w.command == "latency"
              else f"{f['output_tokens_per_s']:,.0f} output tok/s")  # fmt: skip
    return f"{w.name}: {figure} (published: {w.reference}); {out}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workloads", nargs="*", default=["all"], help="names, or 'all'")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--gpu-name", default=None, help="device name to assume (dry runs)")
    args = p.parse_args(argv)
    by_name = {w.name: w for w in WORKLOADS}
    if args.list:
        for w in WORKLOADS:
            print(f"{w.name:<30} {w.command:<10} {w.preset:<12} {w.precision:<5} "
                  f"{w.input_len}/{w.output_len}  published: {w.reference}")  # fmt: skip
        return 0
    names = list(by_name) if args.workloads == ["all"] else args.workloads
    unknown = [n for n in names if n not in by_name]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(by_name)}")
    gpu = args.gpu_name or _gpu_name()
    if gpu is None and not args.dry_run:
        print("error: no CUDA GPU visible; these workloads run on a GPU", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="membound-models-") as tmp:
        for name in names:
            print(
                run_workload(by_name[name], gpu or "any-gpu", Path(tmp), args.dry_run), flush=True
            )
    return 0


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


if __name__ == "__main__":
    sys.exit(main())
