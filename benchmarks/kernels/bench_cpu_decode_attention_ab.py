"""The native decode attention over a whole decode step, two builds of the kernels' source
alternated A B A B in one process: the offline workload's shape on SmolLM2 (64 sequences,
lengths prompt 32-512 plus 0-256 generated, 9 query / 3 KV heads of 64, blocks of 16), one
cache per layer for 30 layers (15-20 MB each: the step reads them from memory, not from
the caches), bf16 and FP8 (E4M3) caches, each with two block layouts:

- ``engine``: the block ids the engine's pool hands out (core/block_pool.py: lowest free id
  first): each prompt's blocks in a run, in admission order, then one block per sequence every
  16 decode steps, the sequences' new blocks interleaved;
- ``shuffled``: every block id at random (a long-running server's fragmented pool; the only
  layout of runs 12-15).

Wall time of the 30-layer sweep with ``--threads`` threads (the threads' balance is part of
what is measured, so not CPU time), medians of ``--repeats``; the source given as
``--baseline`` (a path, e.g. from ``git show <commit>:src/membound/kernels/csrc/cpu_kernels.cpp``)
against the working tree's. Run it as the engine runs (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``:
the caches in huge pages, kernels/cpu_hugepages.py).

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/kernels/bench_cpu_decode_attention_ab.py \\
        --baseline /tmp/base.cpp --output-json benchmarks/results/cpu_decode_attention_ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from native_ab import build

from membound.bench.results import command_line, cpu_name, git_commit, machine_info, versions
from membound.kernels import cpu_native

S, H, KVH, D, BS, LAYERS = 64, 9, 3, 64, 16, 30


LAYOUTS = ("engine", "shuffled")


def block_tables(prompts: list[int], generated: list[int], layout: str,
                 gen: torch.Generator) -> tuple[torch.Tensor, int]:  # fmt: skip
    """[S, max blocks] int32 tables of the sequences' blocks in ``layout`` (module docstring)
    and the blocks they use; block 0 is left unused."""
    tables: list[list[int]] = [[] for _ in prompts]
    next_id = 1
    for s, n in enumerate(prompts):  # admission: each prompt's blocks in a run
        tables[s] = list(range(next_id, next_id + (n + BS - 1) // BS))
        next_id += len(tables[s])
    for step in range(max(generated, default=0)):  # decode: a block when a sequence needs one
        for s, n in enumerate(prompts):
            if step < generated[s] and (n + step) % BS == 0 and (n + step) // BS >= len(tables[s]):
                tables[s].append(next_id)
                next_id += 1
    if layout == "shuffled":
        perm = (torch.randperm(next_id - 1, generator=gen) + 1).tolist()
        tables = [[perm[b - 1] for b in t] for t in tables]
    out = torch.zeros(len(tables), max(len(t) for t in tables), dtype=torch.int32)
    for s, t in enumerate(tables):
        out[s, : len(t)] = torch.tensor(t, dtype=torch.int32)
    return out, next_id


def step_case(dtype: torch.dtype, seed: int, layout: str = "engine") -> dict[str, Any]:
    rng = random.Random(seed)
    prompts = [rng.randint(32, 512) for _ in range(S)]
    generated = [rng.randint(0, 256) for _ in range(S)]
    lens = [p + g for p, g in zip(prompts, generated)]
    gen = torch.Generator().manual_seed(seed)
    tables, num_blocks = block_tables(prompts, generated, layout, gen)
    caches = [
        torch.randn(2, num_blocks, BS, KVH, D, generator=gen).to(dtype) for _ in range(LAYERS)
    ]
    q = torch.randn(S, H, D, generator=gen).bfloat16()
    kv_bytes = sum(lens) * KVH * D * 2 * caches[0].element_size() * LAYERS
    return {"caches": caches, "tables": tables, "lens": torch.tensor(lens, dtype=torch.int32),
            "q": q, "kv_bytes": kv_bytes}  # fmt: skip


def sweep_ms(kernels: ModuleType, case: dict[str, Any]) -> float:
    out = torch.empty_like(case["q"])
    t = time.perf_counter()
    for cache in case["caches"]:
        kernels.decode_attention(
            case["q"], cache, case["tables"], case["lens"], 0.125, 0, out, 1.0, 1.0
        )
    return (time.perf_counter() - t) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--baseline", required=True, help="the baseline cpu_kernels.cpp")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--rounds", type=int, default=2, help="A B alternations per cache dtype")
    p.add_argument("--output-json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    builds = {"baseline": build(Path(a.baseline)), "this tree": build(cpu_native.SOURCE)}
    results: dict[str, Any] = {}
    for layout in LAYOUTS:
        for name, dtype in (("bf16", torch.bfloat16), ("fp8_e4m3", torch.float8_e4m3fn)):
            case = step_case(dtype, seed=0, layout=layout)
            times: dict[str, list[float]] = {k: [] for k in builds}
            for _ in range(a.rounds):
                for label, kernels in builds.items():
                    sweep_ms(kernels, case)  # warm-up
                    times[label] += [sweep_ms(kernels, case) for _ in range(a.repeats)]
            med = {k: statistics.median(v) for k, v in times.items()}
            results[f"{layout}/{name}"] = {
                "kv_bytes": case["kv_bytes"],
                "ms_median": med,
                "gb_per_s": {k: case["kv_bytes"] / v / 1e6 for k, v in med.items()},
                "speedup": med["baseline"] / med["this tree"],
            }
            print(f"{layout} {name}: baseline {med['baseline']:.1f} ms, this tree "
                  f"{med['this tree']:.1f} ms ({med['baseline'] / med['this tree']:.3f}x)")  # fmt: skip
    commit, dirty = git_commit()
    report = {"benchmark": "cpu_decode_attention_ab", "command": command_line(), "commit": commit,
              "dirty": dirty, "cpu": cpu_name(), "machine": machine_info(), "versions": versions(),
              "threads": a.threads, "baseline": a.baseline,
              "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
              "shape": {"seqs": S, "heads": H, "kv_heads": KVH, "head_dim": D, "block_size": BS,
                        "layers": LAYERS},
              "results": results}  # fmt: skip
    if a.output_json:
        Path(a.output_json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
