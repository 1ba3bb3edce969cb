"""What the A/B benchmarks of the native CPU kernels share: two builds of
``csrc/cpu_kernels.cpp`` (a baseline source and the working tree's) loaded side by side in
one process, and the report they write."""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from torch.utils import cpp_extension

from membound.bench.results import command_line, cpu_name, git_commit, machine_info, versions
from membound.kernels import cpu_native


def build(source: Path) -> ModuleType:
    """The kernels compiled from ``source`` (their own extension name per source text)."""
    digest = hashlib.sha1(source.read_bytes()).hexdigest()[:10]
    return cpp_extension.load(name=f"mb_decode_ab_{digest}", sources=[str(source)],
                              extra_cflags=list(cpu_native.CFLAGS), extra_ldflags=["-fopenmp"])  # fmt: skip


def builds(baseline: Path) -> dict[str, ModuleType]:
    """``baseline`` and the working tree's source, built: the two sides of an A/B."""
    return {"baseline": build(baseline), "current": build(cpu_native.SOURCE)}


def write_report(path: Path, benchmark: str, threads: int, baseline: Path, **figures: Any) -> None:
    """The A/B's JSON: what ran where (commit, CPU, versions), then its own figures."""
    commit, dirty = git_commit()
    report = {"benchmark": benchmark, "command": command_line(), "commit": commit, "dirty": dirty,
              "cpu": cpu_name(), "machine": machine_info(), "versions": versions(), "threads": threads,
              "timing": "wall, median of sweeps", "baseline_source": str(baseline), **figures}  # fmt: skip
    path.write_text(json.dumps(report, indent=2) + "\n")


def parser(doc: str, repeats: int) -> argparse.ArgumentParser:
    """The options every A/B takes (its own are added by the caller)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument(
        "--baseline", type=Path, required=True, help="the kernels' source to compare against"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--output-json", type=Path)
    return ap


def alternate(
    mods: dict[str, ModuleType], repeats: int, timed: Callable[[ModuleType], float]
) -> dict[str, float]:
    """Medians of ``timed(build)`` over ``repeats`` rounds of the builds in turn (A B A B)."""
    times: dict[str, list[float]] = {name: [] for name in mods}
    for _ in range(repeats):
        for name, mod in mods.items():
            times[name].append(timed(mod))
    return {name: statistics.median(v) for name, v in times.items()}


def figures(medians: dict[str, float], unit: str, digits: int) -> dict[str, float]:
    """Each build's median (``<build>_<unit>``) and the speedup of the current one."""
    return {**{f"{name}_{unit}": round(v, digits) for name, v in medians.items()},
            "speedup": round(medians["baseline"] / medians["current"], 3)}  # fmt: skip
