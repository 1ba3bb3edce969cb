"""The native prefill attention from two builds of the kernels' source, alternated A B A B in
one process, at SmolLM2's heads (9 query / 3 KV heads of 64, blocks of 16) over a bf16 cache:
one 512-token prompt, one of 2,048, and a prefill step of the offline workload's kind (prompts
of 100-500 tokens, ~2,000 tokens in all).

Wall time of one call with ``--threads`` threads (the threads' balance is part of what is
measured), medians of ``--repeats``; the builds' outputs must agree within bf16 rounding
(they may sum in another order). ``--baseline`` is a source path, e.g. from
``git show <commit>:src/membound/kernels/csrc/cpu_kernels.cpp``. ``useful_gflops``: the
causal product's multiply-adds (q_len x (q_len + 1) / 2 per head for QK^T and again for PV)
over the current build's time.

    python benchmarks/kernels/bench_cpu_prefill_attention_ab.py --baseline /tmp/base.cpp \\
        --output-json benchmarks/results/cpu_prefill_attention_ab.json
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

import torch
from native_ab import alternate, builds, figures, parser, write_report

H, KVH, D, BS = 9, 3, 64, 16
CASES = {"one_512": [512], "one_2048": [2048], "step_mixed": [100, 300, 500, 250, 450, 350]}


def make_case(lens: list[int]) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(sum(lens))
    per_seq = [(n + BS - 1) // BS for n in lens]
    cache = torch.randn(2, sum(per_seq) + 1, BS, KVH, D, generator=g).bfloat16()
    tables = torch.zeros(len(lens), max(per_seq), dtype=torch.long)
    used = 1
    for s, n in enumerate(per_seq):
        tables[s, :n] = torch.arange(used, used + n)
        used += n
    q = torch.randn(sum(lens), H, D, generator=g).bfloat16()
    starts = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.long)
    return q, cache, tables, starts, torch.tensor(lens, dtype=torch.long)


def measure(mods: dict[str, ModuleType], name: str, repeats: int) -> dict[str, Any]:
    q, cache, tables, starts, lens = make_case(CASES[name])
    outs = {}
    for build, mod in mods.items():
        outs[build] = torch.empty_like(q)
        mod.prefill_attention(q, cache, tables, starts, lens, D**-0.5, 0, outs[build])
    diff = (outs["baseline"].float() - outs["current"].float()).abs().max().item()

    def timed(mod: ModuleType) -> float:
        out = torch.empty_like(q)
        t = time.perf_counter()
        mod.prefill_attention(q, cache, tables, starts, lens, D**-0.5, 0, out)
        return (time.perf_counter() - t) * 1e3

    med = alternate(mods, repeats, timed)
    macs = sum(n * (n + 1) / 2 for n in CASES[name]) * H * D * 2
    return {"case": name, "lens": CASES[name], "max_abs_diff": diff, **figures(med, "ms", 3),
            "useful_gflops": round(2 * macs / med["current"] / 1e6, 1)}  # fmt: skip


def main() -> None:
    ap = parser(__doc__, repeats=21)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    mods = builds(a.baseline)
    rows = [measure(mods, name, a.repeats) for name in CASES]
    for r in rows:
        print(f"{r['case']:>10}: baseline {r['baseline_ms']:7.3f} ms  current {r['current_ms']:7.3f} ms"
              f"  {r['speedup']:.2f}x  {r['useful_gflops']} GFLOP/s  max diff {r['max_abs_diff']:.1e}")  # fmt: skip
    if a.output_json:
        write_report(a.output_json, "cpu_prefill_attention_ab", a.threads, a.baseline, cases=rows)


if __name__ == "__main__":
    main()
