"""RMSNorm fused with the residual add, and the bf16 K/V store, from two builds of the native
kernels' source alternated A B A B in one process, at SmolLM2's width (hidden 576; 3 KV heads
of 64) for a prefill step (2,048 rows) and a decode step (64 rows).

Each measured call gets its own buffers out of 30 (one per layer, as in a forward pass) and
its input is rewritten just before the call (as the GEMM that produces it would leave it), so
the call sees the caches a step gives it rather than its own previous output. Wall time with
``--threads`` threads, medians of ``--repeats`` sweeps over the 30 buffers; the builds'
outputs must be equal. ``--baseline`` is a source path, e.g. from
``git show <commit>:src/membound/kernels/csrc/cpu_kernels.cpp``.

    python benchmarks/kernels/bench_cpu_elementwise_ab.py --baseline /tmp/base.cpp \\
        --output-json benchmarks/results/cpu_elementwise_ab.json
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from native_ab import alternate, builds, figures, parser, write_report

HIDDEN, KVH, D, BS, LAYERS = 576, 3, 64, 16, 30


def rms_case(rows: int) -> tuple[list[tuple[torch.Tensor, ...]], Callable[..., Any]]:
    g = torch.Generator().manual_seed(rows)
    src = torch.randn(rows, HIDDEN, generator=g).bfloat16()
    w = torch.randn(HIDDEN, generator=g).bfloat16()
    bufs = [(src, torch.empty_like(src), torch.randn(rows, HIDDEN, generator=g).bfloat16(), w)
            for _ in range(LAYERS)]  # fmt: skip

    def call(mod: ModuleType, src: torch.Tensor, x: torch.Tensor, r: torch.Tensor, w: torch.Tensor):
        x.copy_(src)
        t = time.perf_counter()
        out = mod.rms_norm(x, r, w, 1e-5)
        return time.perf_counter() - t, out

    return bufs, call


def store_case(rows: int) -> tuple[list[tuple[torch.Tensor, ...]], Callable[..., Any]]:
    g = torch.Generator().manual_seed(rows)
    blocks = 4 * rows // BS + 1
    src = torch.randn(rows, KVH, D, generator=g).bfloat16()
    bufs = [(src, torch.empty_like(src), torch.zeros(2, blocks, BS, KVH, D, dtype=torch.bfloat16),
             torch.randperm(blocks * BS, generator=g)[:rows]) for _ in range(LAYERS)]  # fmt: skip

    def call(
        mod: ModuleType,
        src: torch.Tensor,
        k: torch.Tensor,
        cache: torch.Tensor,
        slots: torch.Tensor,
    ):
        k.copy_(src)
        t = time.perf_counter()
        mod.store_kv(k, k, cache, slots, 1.0, 1.0)
        return time.perf_counter() - t, cache

    return bufs, call


CASES = {"fused_add_rms_norm": rms_case, "store_kv": store_case}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return all(same(x, y) for x, y in zip(a, b, strict=True))


def measure(mods: dict[str, ModuleType], op: str, rows: int, repeats: int) -> dict[str, Any]:
    bufs, call = CASES[op](rows)
    outs = {name: call(mod, *bufs[0])[1] for name, mod in mods.items()}
    first = next(iter(outs.values()))
    equal = all(same(first, o) for o in outs.values())
    med = alternate(mods, repeats, lambda mod: sum(call(mod, *b)[0] for b in bufs) / LAYERS * 1e6)
    return {"op": op, "rows": rows, "outputs_equal": equal, **figures(med, "us", 1)}


def main() -> None:
    ap = parser(__doc__, repeats=15)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    mods = builds(a.baseline)
    rows = [measure(mods, op, n, a.repeats) for op in CASES for n in (2048, 64)]
    for r in rows:
        print(f"{r['op']:>20} {r['rows']:5d} rows: baseline {r['baseline_us']:8.1f} us  "
              f"current {r['current_us']:8.1f} us  {r['speedup']:.2f}x  equal {r['outputs_equal']}")  # fmt: skip
    if a.output_json:
        write_report(
            a.output_json, "cpu_elementwise_ab", a.threads, a.baseline, layers=LAYERS, rows=rows
        )


if __name__ == "__main__":
    main()
