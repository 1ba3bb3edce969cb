"""What the phases of benchmarks/gpu_validate.py share: where they run (a GPU, or the CPU at
tiny shapes for ``--dry-run``), timing, the measured ceilings, the 8B-shaped model config,
and the result file each phase rewrites after every measurement (so a phase cut short by
its timeout still leaves what it measured).

A phase is ``python benchmarks/gpu_phase_<name>.py --out DIR [--dry-run]``: it prints what
it does (the orchestrator captures that as ``DIR/<name>.log``) and keeps ``DIR/<name>.json``
up to date: ``{"phase", "dry_run", "device", "results": {...}, "failures": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

BENCHMARKS = Path(__file__).resolve().parent
GB = 1e9

LLAMA3_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 8192,
    "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "bos_token_id": 128000, "eos_token_id": 128001,
}  # fmt: skip
# The dry run's stand-in: the same architecture and GQA ratio, tiny.
TINY_LLAMA: dict[str, Any] = {
    **LLAMA3_8B, "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
    "max_position_embeddings": 512, "torch_dtype": "float32", "bos_token_id": 1,
    "eos_token_id": 2,
}  # fmt: skip


@dataclass(frozen=True)
class Target:
    """Where a phase runs and at what size: the GPU at real shapes, or the CPU (Triton under
    its interpreter, fp32) at tiny ones for the dry run."""

    dry_run: bool
    device: torch.device
    dtype: torch.dtype  # the activations / model dtype

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def pick(self, real: Any, tiny: Any) -> Any:
        """``real`` on the GPU, ``tiny`` in the dry run."""
        return tiny if self.dry_run else real

    def model_config(self) -> dict[str, Any]:
        return self.pick(LLAMA3_8B, TINY_LLAMA)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def free(self) -> None:
        """After dropping an engine or model: collect it and return its device memory."""
        import gc

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def time_ms(self, fn: Callable[[], Any], warmup: int = 3, iters: int = 10) -> float:
        """Median ms of ``fn``: CUDA events with the L2 flushed before each call on the GPU,
        wall time on the CPU."""
        warmup, iters = self.pick(warmup, 1), self.pick(iters, 2)
        flush = torch.empty(self.pick(256 << 20, 1), dtype=torch.int8, device=self.device)
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            flush.zero_()
            if self.cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[len(times) // 2]


def make_target(dry_run: bool) -> Target:
    if dry_run:
        return Target(True, torch.device("cpu"), torch.float32)
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible: run with --dry-run to exercise the phases on the CPU")
    return Target(False, torch.device("cuda"), torch.bfloat16)


def copy_bandwidth_gbs(t: Target) -> float:
    """Device-to-device copy, bytes read + written per second: the ceiling memory-bound
    kernels are held against (measured, not the datasheet's)."""
    n = t.pick(2 << 30, 16 << 20)
    src = torch.empty(n, dtype=torch.uint8, device=t.device)
    dst = torch.empty_like(src)
    ms = t.time_ms(lambda: dst.copy_(src))
    return 2 * n / (ms / 1e3) / GB


@dataclass
class PhaseResult:
    """``DIR/<phase>.json``, rewritten after every ``record``."""

    phase: str
    out: Path
    target: Target
    results: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def record(self, key: str, value: Any, line: str | None = None) -> None:
        self.results[key] = value
        if line is not None:
            print(line, flush=True)
        self.write()

    def fail(self, what: str, error: BaseException | str) -> None:
        message = f"{what}: {type(error).__name__}: {error}" if isinstance(
            error, BaseException) else f"{what}: {error}"  # fmt: skip
        self.failures.append(message)
        print(f"FAILED {message}", flush=True)
        self.write()

    def attempt(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one measurement; a failure is recorded and the phase goes on to the next."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - one broken item must not hide the others
            import traceback

            traceback.print_exc()
            self.fail(what, e)
            return None

    def write(self) -> None:
        doc = {"phase": self.phase, "dry_run": self.target.dry_run,
               "device": device_name(self.target), "results": self.results,
               "failures": self.failures}  # fmt: skip
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / f".{self.phase}.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        os.replace(tmp, self.out / f"{self.phase}.json")

    def exit_code(self) -> int:
        return 1 if self.failures else 0


def device_name(t: Target) -> str:
    return torch.cuda.get_device_name() if t.cuda else "cpu (dry run)"


def phase_args(name: str, doc: str | None) -> tuple[argparse.Namespace, Target, PhaseResult]:
    p = argparse.ArgumentParser(description=(doc or name).split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="results folder")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, interpreter")
    args = p.parse_args()
    target = make_target(args.dry_run)
    result = PhaseResult(name, args.out, target)
    result.write()
    print(f"phase {name} on {device_name(target)} ({target.dtype})", flush=True)
    return args, target, result


def write_model_folder(folder: Path, config: dict[str, Any]) -> Path:
    """A checkpoint folder holding only config.json: weights come from load_format=dummy."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder
