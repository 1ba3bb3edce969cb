"""Huge pages for CPU weights (kernels/cpu_hugepages.py): SmolLM2-135M's whole bf16 GEMM
stack (30 layers of qkv / o / gate_up / down, oneDNN-prepacked, and the 49,152-row LM head:
0.27 GB) streamed once per step at batch 1, in a child process started with and without
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, alternating A B A B.

    python benchmarks/kernels/bench_cpu_hugepages.py --threads 1 \\
        --output-json benchmarks/results/cpu_hugepages.json

Reports ms per step (wall, median of the step times in each child) and the child's
AnonHugePages (how much of its memory huge pages back).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import git_commit

CHILD = r"""
import json, statistics, sys, time, torch
from membound.kernels.cpu_linear import prepack_weight, linear_prepacked
torch.set_num_threads(int(sys.argv[1]))
shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
layers = [[prepack_weight(torch.randn(o, i).bfloat16()) for o, i in shapes] for _ in range(30)]
head = prepack_weight(torch.randn(49152, 576).bfloat16())
x = {576: torch.randn(1, 576).bfloat16(), 1536: torch.randn(1, 1536).bfloat16()}
def step():
    for ws in layers:
        for (o, i), w in zip(shapes, ws):
            linear_prepacked(x[i], w)
    linear_prepacked(x[576], head)
for _ in range(3):
    step()
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); step(); times.append((time.perf_counter() - t) * 1e3)
huge = [l.split()[1] for l in open("/proc/self/smaps_rollup") if l.startswith("AnonHugePages")]
print(json.dumps({"ms_per_step": statistics.median(times), "anon_huge_kib": int(huge[0])}))
"""


def run(threads: int, steps: int, huge: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if huge:
        env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(steps)], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--output-json", default=None)
    a = p.parse_args()
    rows = {"4k_pages": [], "huge_pages": []}
    for r in range(a.rounds):
        for key, huge in (("4k_pages", False), ("huge_pages", True)):
            res = run(a.threads, a.steps, huge)
            rows[key].append(res)
            print(f"round {r} {key} {json.dumps(res)} load {os.getloadavg()}", flush=True)
    med = {k: statistics.median(x["ms_per_step"] for x in v) for k, v in rows.items()}
    report = {"benchmark": "cpu_hugepages", "commit": git_commit(), "threads": a.threads,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": rows,
              "median_ms_per_step": med,
              "speedup": round(med["4k_pages"] / med["huge_pages"], 3)}  # fmt: skip
    print(json.dumps({"median_ms_per_step": med, "speedup": report["speedup"]}))
    if a.output_json:
        Path(a.output_json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
