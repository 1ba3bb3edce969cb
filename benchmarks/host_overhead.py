"""Host overhead per step: from a SchedulerOutput to device-ready inputs.

What the model runner does on the host before every forward pass: slot each scheduled
request, update its block table, compute token ids, positions, slot mapping, the decode and
prefill batches and the sampling metadata, and move them to the device
(``ModelRunner.prepare_inputs``: the persistent InputBatch, worker/input_batch.py). Timed on
decode steps (one token per request, every request sampling, greedy) at ``--context`` tokens
of context for each batch size, after warm-up steps; the requests' block tables grow by one
block every ``block_size`` steps, as in serving.

Figures per batch size:
  host_ms_per_step          the runner's path on this device (CPU: the arrays are used in
                            place; CUDA: packed into one pinned buffer, one copy)
  host_ms_per_step_staged   the CUDA-shaped path (staging buffer + one copy) run on this device
  cpu_decode_plan_ms        the CPU kernel backend's per-step metadata (its decode plan), built
                            once per step on top of the inputs (CPU backend only)

The machine's load average is recorded: on a shared machine, other processes' load inflates
these figures. ``--threads 1`` keeps torch's intra-op pool from spinning against them.

    python benchmarks/host_overhead.py --output-json benchmarks/results/host_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from membound.core.outputs import NewRequestData, ScheduledChunk, SchedulerOutput
from membound.kernels.cpu_attention import plan_decode
from membound.sampling_params import SamplingParams
from membound.worker.input_batch import InputBatch
from membound.worker.model_runner import RunnerRequestState

VOCAB = 32000
BYTES_PER_TOKEN = 4 * 128 * 2  # 4 KV heads x head_dim 128 x fp16: the bucket sizing only


class DecodeTraffic:
    """``batch`` requests decoding one token per step at ``context`` tokens of context."""

    def __init__(self, batch: int, context: int, block_size: int) -> None:
        self.block_size = block_size
        self.ids = [f"r{i}" for i in range(batch)]
        self.computed = [context + (i % 7) for i in range(batch)]  # a little length spread
        self.tables: list[list[int]] = []
        next_block = 0
        for n in self.computed:
            k = n // block_size + 1
            self.tables.append(list(range(next_block, next_block + k)))
            next_block += k
        self.next_block = next_block
        self.first = True

    def step(self) -> SchedulerOutput:
        params = SamplingParams(temperature=0, max_tokens=1 << 20, ignore_eos=True)
        new = []
        if self.first:
            new = [NewRequestData(r, [1] * self.computed[i], params, (2,))
                   for i, r in enumerate(self.ids)]  # fmt: skip
            self.first = False
        chunks = []
        for i, rid in enumerate(self.ids):
            n = self.computed[i]
            if n // self.block_size + 1 > len(self.tables[i]):  # the scheduler's new block
                self.tables[i].append(self.next_block)
                self.next_block += 1
            chunks.append(ScheduledChunk(rid, [7], n, self.tables[i], True))
            self.computed[i] = n + 1
        return SchedulerOutput(new_requests=new, chunks=chunks)


def _states(sched: SchedulerOutput, states: dict[str, RunnerRequestState]) -> None:
    for new in sched.new_requests:
        states[new.req_id] = RunnerRequestState(
            new.prompt_token_ids, new.sampling_params, new.eos_token_ids, None
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    batch: int,
    context: int,
    steps: int,
    warmup: int,
    device: torch.device,
    stage: bool | None,
    block_size: int,
) -> tuple[float, float]:
    """(median host ms per prepare, median ms of the CPU decode plan on its result)."""
    traffic = DecodeTraffic(batch, context, block_size)
    max_len = context + steps + warmup + 16
    ib = InputBatch(batch, max_len, block_size, VOCAB, device, None, None, stage=stage)
    states: dict[str, RunnerRequestState] = {}
    prep, plan = [], []
    for i in range(warmup + steps):
        sched = traffic.step()
        _states(sched, states)
        _sync(device)
        t0 = time.perf_counter()
        inputs = ib.prepare(sched, states)
        _sync(device)
        t1 = time.perf_counter()
        d = inputs.attn.decode
        assert d is not None and inputs.sampling is not None
        if device.type == "cpu":
            plan_decode(d.block_tables, d.seq_lens, block_size, None, BYTES_PER_TOKEN)
        t2 = time.perf_counter()
        if i >= warmup:
            prep.append((t1 - t0) * 1e3)
            plan.append((t2 - t1) * 1e3)
    return statistics.median(prep), statistics.median(plan)


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256, 1024])
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--output-json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from membound.entrypoints.sysinfo import collect_info

    device = torch.device(args.device)
    results: list[dict[str, Any]] = []
    for b in args.batch_sizes:
        host, plan = time_steps(b, args.context, args.steps, args.warmup, device, None,
                                args.block_size)  # fmt: skip
        staged, _ = time_steps(b, args.context, args.steps, args.warmup, device, True,
                               args.block_size)  # fmt: skip
        row = {"batch_size": b, "context_len": args.context, "host_ms_per_step": host,
               "host_ms_per_step_staged": staged,
               "cpu_decode_plan_ms": plan if device.type == "cpu" else None}  # fmt: skip
        results.append(row)
        print(json.dumps(row), flush=True)
    targets = {"256": 1.5, "1024": 5.0}
    met = {k: next(r["host_ms_per_step"] for r in results if r["batch_size"] == int(k)) <= v
           for k, v in targets.items() if int(k) in args.batch_sizes}  # fmt: skip
    report = {
        "benchmark": "host_overhead",
        "commit": _git_commit(),
        "machine": collect_info(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": os.getloadavg(),
        "config": vars(args),
        "results": results,
        "targets_ms": targets,
        "targets_met": met,
    }
    print(json.dumps({"targets_met": met}))
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
