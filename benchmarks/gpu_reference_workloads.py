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
depend on. The published FP8 figures use FP8 weights AND an FP8 KV cache, so the FP8
workloads run with ``--quantization fp8 --kv-cache-dtype fp8``; where the engine config
refuses either, they are skipped with the reason recorded in ``--out``'s summary, never run
in another precision.

The bench commands run from source (``python -m membound.entrypoints.cli``, with this
checkout's ``src`` on PYTHONPATH), so no installed ``membound`` executable is needed. Each run
writes ``<out>/<workload>-<gpu>.json`` (the ``bench`` JSON plus a ``reference`` entry naming
the published figure) and ``.log`` (the full console output); ``<out>/workloads.json`` lists
every workload's status. ``--plot`` adds a PNG per run when matplotlib is installed (a note
in the log otherwise).

    python benchmarks/gpu_reference_workloads.py --list
    python benchmarks/gpu_reference_workloads.py --dry-run all
    python benchmarks/gpu_reference_workloads.py --out "$OUT" llama3-8b-bf16-batch1
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"


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


def fp8_flags() -> tuple[str, ...] | str:
    """Engine flags for FP8 weights and an FP8 KV cache (what the published FP8 figures
    use), or the reason they cannot run yet (a string naming the missing feature)."""
    from membound.config import ConfigError
    from membound.config.engine import CacheConfig
    from membound.engine.engine_args import EngineArgs

    names = {f.name for f in dataclasses.fields(EngineArgs)}
    if "quantization" not in names:
        return "the engine has no FP8 weights yet (EngineArgs.quantization)"
    try:
        CacheConfig(kv_cache_dtype="fp8")
    except (ConfigError, TypeError, ValueError) as e:
        return f"needs kv_cache_dtype='fp8' (an FP8 KV cache), which the config refuses: {e}"
    return ("--quantization", "fp8", "--kv-cache-dtype", "fp8")


def device_slug(name: str) -> str:
    """ "NVIDIA H100 80GB HBM3" -> "h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")


def bench_command(w: Workload, model: Path, json_path: Path, plot: bool = False) -> list[str] | str:
    """The bench command line for a workload (run from source), or why it cannot run yet."""
    precision: tuple[str, ...] = ("--dtype", "bfloat16")
    if w.precision == "fp8":
        flags = fp8_flags()
        if isinstance(flags, str):
            return flags
        precision += flags
    cmd = [sys.executable, "-m", "membound.entrypoints.cli", "bench", w.command, str(model),
           "--load-format", "dummy", *precision,
           "--input-len", str(w.input_len), "--output-len", str(w.output_len), *w.options,
           "--output-json", str(json_path)]  # fmt: skip
    if plot and importlib.util.find_spec("matplotlib") is not None:
        cmd += ["--plot", str(json_path.with_suffix(".png"))]
    return cmd


def _source_env() -> dict[str, str]:
    """This checkout's src first on PYTHONPATH: the subprocess runs the code next to it."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), path) if p)}


def run_workload(
    w: Workload, gpu: str, model_root: Path, out_dir: Path, dry_run: bool, plot: bool = False
) -> dict[str, Any]:
    """Run one workload; returns its status entry ({"name", "status", "line", ...})."""
    entry: dict[str, Any] = {"name": w.name, "reference": w.reference}
    if w.gpu_pattern and not re.search(w.gpu_pattern, gpu.lower()):
        reason = f"needs a GPU matching {w.gpu_pattern!r} (this is {gpu})"
        return {**entry, "status": "skipped", "reason": reason,
                "line": f"{w.name}: skipped, {reason}"}  # fmt: skip
    out = out_dir / f"{w.name}-{device_slug(gpu)}.json"
    cmd = bench_command(w, write_model_folder(w.preset, model_root), out, plot)
    if isinstance(cmd, str):
        return {**entry, "status": "skipped", "reason": cmd, "line": f"{w.name}: skipped, {cmd}"}
    if dry_run:
        return {**entry, "status": "dry-run", "line": f"{w.name}: {shlex.join(cmd)}"}
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".log")
    with open(log, "w", encoding="utf-8") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        if plot and "--plot" not in cmd:
            f.write("note: --plot skipped, matplotlib is not installed\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True,
                              env=_source_env())  # fmt: skip
    if proc.returncode != 0 or not out.exists():
        line = f"{w.name}: FAILED (exit {proc.returncode}); see {log}"
        return {**entry, "status": "failed", "log": str(log), "line": line}
    doc: dict[str, Any] = json.loads(out.read_text())
    doc["reference"] = {"workload": w.name, "published": w.reference,
                        "source": "shared/reference/hardware-and-models.md"}  # fmt: skip
    out.write_text(json.dumps(doc, indent=2) + "\n")
    f = doc["figures"]
    figure = (f"{f['tpot_ms_mean']:.2f} ms/token" if w.command == "latency"
              else f"{f['output_tokens_per_s']:,.0f} output tok/s")  # fmt: skip
    line = f"{w.name}: {figure} (published: {w.reference}); {out}"
    return {**entry, "status": "ok", "result": str(out), "line": line}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workloads", nargs="*", default=["all"], help="names, or 'all'")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--gpu-name", default=None, help="device name to assume (dry runs)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default %(default)s)")
    p.add_argument("--plot", action="store_true", help="a PNG per run (needs matplotlib)")
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
    statuses = []
    with tempfile.TemporaryDirectory(prefix="membound-models-") as tmp:
        for name in names:
            entry = run_workload(by_name[name], gpu or "any-gpu", Path(tmp), args.out,
                                 args.dry_run, args.plot)  # fmt: skip
            print(entry.pop("line"), flush=True)
            statuses.append(entry)
            if not args.dry_run:
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / "workloads.json").write_text(
                    json.dumps({"gpu": gpu, "workloads": statuses}, indent=2) + "\n"
                )
    return 1 if any(e["status"] == "failed" for e in statuses) else 0


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


if __name__ == "__main__":
    sys.exit(main())
