"""One prepared GPU validation run that fits a short GPU window and leaves partial results.

    PYTHONPATH=src python benchmarks/gpu_validate.py --out DIR [--dry-run] [--budget-s 480]
        [--phases env,smoke,...] [--offload]

Phases run in order, each a subprocess under its own timeout (never past the budget left:
SIGINT at the timeout, SIGKILL 15 s later),
its output in ``DIR/<phase>.log``; ``DIR/summary.json`` is rewritten before the first phase
and after every one:

    {"schema": "membound.gpu-validate/1", "dry_run", "budget_s", "commit", "commit_dirty",
     "device", "started", "elapsed_s", "complete",
     "phases": [{"name", "status": "pending|ok|failed|timeout|skipped", "seconds",
                 "timeout_s", "reason"?, "returncode"?, "results"?, "failures"?}, ...]}

- env: nvidia-smi, versions, commit, copy / pinned-H2D bandwidth, bf16 matmul TFLOP/s;
- smoke: every kernel once at Llama-3-8B shapes (bf16) vs its reference, FP8 _scaled_mm,
  INT8 _int_mm;
- tests: the ``-m gpu`` tests, sharded over pytest-xdist workers when it is installed,
  ``DIR/tests.xml`` (JUnit);
- kernels: trimmed decode/prefill/MoE/quantized-GEMM benchmarks vs copy bandwidth and torch;
- e2e: 8B-shaped dummy model, transformers baseline then membound BF16 / FP8 / INT4;
- offload (with ``--offload``): decode with 0/50/90% of the layers in CPU memory.

A phase whose expected duration no longer fits the budget is skipped with the reason
recorded. Each phase's own result file is folded into summary.json and removed, so DIR
holds at most 8 files (what a lent GPU machine sends back: docs/performance.md).
``--dry-run`` runs every phase on the CPU at tiny shapes (Triton in its interpreter, fp32).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
SCHEMA = "membound.gpu-validate/1"


@dataclass(frozen=True)
class Phase:
    name: str
    expected_s: float  # on the GPU: skipped when less than this is left
    timeout_s: float
    dry_expected_s: float
    optional: bool = False


PHASES = (
    Phase("env", 30, 90, 5),
    Phase("smoke", 60, 150, 10),
    Phase("tests", 90, 180, 10),
    Phase("kernels", 60, 150, 10),
    Phase("e2e", 150, 300, 15),
    Phase("offload", 90, 150, 10, optional=True),
)


def phase_command(phase: Phase, out: Path, dry_run: bool) -> list[str]:
    if phase.name == "tests":
        return tests_command(out, dry_run)
    script = "gpu_offload.py" if phase.name == "offload" else f"gpu_phase_{phase.name}.py"
    return [sys.executable, str(BENCHMARKS / script), "--out", str(out),
            *(["--dry-run"] if dry_run else [])]  # fmt: skip


def tests_command(out: Path, dry_run: bool) -> list[str]:
    """The gpu-marked tests (slow ones excluded), JUnit XML, xdist shards when installed."""
    import importlib.util

    cmd = [sys.executable, "-m", "pytest", "-m", "gpu and not slow", "-q", "-rfE",
           "-p", "no:cacheprovider", "-o", "addopts=", f"--junitxml={out / 'tests.xml'}"]  # fmt: skip
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd += ["--timeout", "120"]
    if not dry_run and importlib.util.find_spec("xdist") is not None:
        cmd += ["-n", "4", "--dist", "loadfile"]
    # the dry run collects one file (collecting all of tests/ alone takes ~20 s on a CPU)
    dry_target = ROOT / "tests" / "kernels" / "test_paged_attention.py"
    return cmd + [str(dry_target if dry_run else ROOT / "tests")]


def junit_counts(path: Path) -> dict[str, int] | None:
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def child_env(dry_run: bool, commit: str | None, dirty: bool | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    if commit and "MEMBOUND_COMMIT" not in env:  # every phase reports the same commit
        env["MEMBOUND_COMMIT"] = commit + ("-dirty" if dirty else "")
    if dry_run:
        env["TRITON_INTERPRET"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


GRACE_S = 15.0  # after a timeout: SIGINT, this long to finish up (pytest writes its XML), SIGKILL


def run_phase(
    cmd: list[str], log: Path, timeout: float, env: dict[str, str]
) -> tuple[str, int | None]:
    """(status, return code). On timeout the phase's process group gets SIGINT (pytest then
    still writes its JUnit XML; the phase scripts have written each result as it came), and
    SIGKILL ``GRACE_S`` later if it is still running."""
    with open(log, "w", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)  # fmt: skip
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            f.write(f"\n[gpu_validate] stopped after its {timeout:.0f} s timeout\n")
            return "timeout", None
    return ("ok" if rc == 0 else "failed"), rc


def fold_results(entry: dict[str, Any], out: Path, name: str) -> None:
    """Move DIR/<name>.json (the phase's own results) into the summary entry."""
    path = out / f"{name}.json"
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
            entry["results"], entry["failures"] = doc.get("results"), doc.get("failures")
        except json.JSONDecodeError as e:
            entry["failures"] = [f"unreadable {path.name}: {e}"]
        path.unlink()
    (out / f".{name}.json.tmp").unlink(missing_ok=True)  # a write cut short by a kill
    if name == "tests":
        entry["results"] = {"junit": "tests.xml", "counts": junit_counts(out / "tests.xml")}


class Summary:
    def __init__(self, out: Path, args: argparse.Namespace, phases: list[Phase]) -> None:
        sys.path.insert(0, str(ROOT / "src"))
        from membound.bench.provenance import source_commit

        self.out = out
        self.commit, self.dirty = source_commit()
        self.t0 = time.monotonic()
        self.doc: dict[str, Any] = {
            "schema": SCHEMA, "dry_run": args.dry_run, "budget_s": args.budget_s,
            "commit": self.commit, "commit_dirty": self.dirty, "device": None,
            "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "elapsed_s": 0.0, "complete": False,
            "phases": [{"name": p.name, "status": "pending"} for p in phases],
        }  # fmt: skip
        self.write()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def write(self) -> None:
        self.doc["elapsed_s"] = round(self.elapsed(), 1)
        tmp = self.out / ".summary.json.tmp"
        tmp.write_text(json.dumps(self.doc, indent=1, default=str) + "\n")
        os.replace(tmp, self.out / "summary.json")


def select(args: argparse.Namespace) -> list[Phase]:
    by_name = {p.name: p for p in PHASES}
    names = args.phases.split(",") if args.phases else [
        p.name for p in PHASES if not p.optional or args.offload]  # fmt: skip
    unknown = [n for n in names if n not in by_name]
    if unknown:
        sys.exit(f"unknown phase(s) {', '.join(unknown)}; choose from {', '.join(by_name)}")
    return [by_name[n] for n in names]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="results folder")
    p.add_argument("--dry-run", action="store_true", help="every phase on the CPU, tiny shapes")
    p.add_argument("--budget-s", type=float, default=480, help="seconds for all phases")
    p.add_argument("--phases", default=None, help="comma-separated subset, in this order")
    p.add_argument("--offload", action="store_true", help="add the optional offload phase")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    phases = select(args)
    summary = Summary(args.out, args, phases)
    env = child_env(args.dry_run, summary.commit, summary.dirty)
    worst = 0
    for phase, entry in zip(phases, summary.doc["phases"]):
        left = args.budget_s - summary.elapsed()
        expected = phase.dry_expected_s if args.dry_run else phase.expected_s
        if left - GRACE_S < expected:
            entry.update(status="skipped", seconds=0.0,
                         reason=f"needs about {expected:.0f} s, {max(left, 0):.0f} s of the "
                                f"{args.budget_s:.0f} s budget left")  # fmt: skip
        else:
            timeout = min(phase.timeout_s, left - GRACE_S)
            print(f"[gpu_validate] {phase.name} (timeout {timeout:.0f} s)", flush=True)
            start = time.monotonic()
            status, rc = run_phase(phase_command(phase, args.out, args.dry_run),
                                   args.out / f"{phase.name}.log", timeout, env)  # fmt: skip
            entry.update(status=status, returncode=rc, timeout_s=round(timeout, 1),
                         seconds=round(time.monotonic() - start, 1))  # fmt: skip
            fold_results(entry, args.out, phase.name)
            if phase.name == "env" and entry.get("results"):
                summary.doc["device"] = entry["results"].get("device")
            worst = max(worst, 0 if status == "ok" else 1)
        print(f"[gpu_validate] {phase.name}: {entry['status']}"
              + (f" ({entry['reason']})" if "reason" in entry else f" in {entry['seconds']} s"),
              flush=True)  # fmt: skip
        summary.write()
    summary.doc["complete"] = True
    summary.write()
    print(f"[gpu_validate] summary: {args.out / 'summary.json'}", flush=True)
    return worst


if __name__ == "__main__":
    sys.exit(main())
