"""A decode step's GEMMs from two builds of the native kernels' source, alternated A B A B in
one process: SmolLM2's 30 layers (QKV 576 -> 960, O 576 -> 576, gate/up 576 -> 2 x 1536 with
SiLU-and-mul fused, down 1536 -> 576) and its LM head (576 -> 49,152), bf16 weights packed as
the engine packs them, every layer its own weights (~270 MB a sweep: they stream from memory,
not from the caches), at 1-64 rows (the sequences of a decode step).

Wall time of a sweep with ``--threads`` threads, medians of ``--repeats``; the builds' outputs
must be equal. ``--baseline`` is a source path, e.g. from
``git show <commit>:src/membound/kernels/csrc/cpu_kernels.cpp``.

    python benchmarks/kernels/bench_cpu_decode_gemm_ab.py --baseline /tmp/base.cpp \\
        --output-json benchmarks/results/cpu_decode_gemm_ab.json
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

import torch
from native_ab import alternate, builds, figures, parser, write_report

from membound.kernels.cpu_linear import pack_vnni

HIDDEN, QKV, INTER, VOCAB, LAYERS = 576, 960, 1536, 49152, 30


def weights(seed: int) -> tuple[list[tuple[torch.Tensor, ...]], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def packed(n: int, k: int) -> torch.Tensor:
        return pack_vnni((torch.randn(n, k, generator=g) * 0.05).bfloat16())

    layers = [(packed(QKV, HIDDEN), packed(HIDDEN, HIDDEN), packed(2 * INTER, HIDDEN), packed(HIDDEN, INTER))
              for _ in range(LAYERS)]  # fmt: skip
    return layers, packed(VOCAB, HIDDEN)


def sweep(
    mod: ModuleType, x: torch.Tensor, layers: list[tuple[torch.Tensor, ...]], head: torch.Tensor
):
    outs = []
    for qkv, o, gate_up, down in layers:
        outs.append(mod.linear_vnni(x, qkv, QKV, None))
        outs.append(mod.linear_vnni(x, o, HIDDEN, None))
        y = mod.linear_vnni_silu(x, gate_up, INTER, None)
        outs.append(mod.linear_vnni(y, down, HIDDEN, None))
    outs.append(mod.linear_vnni(x, head, VOCAB, None))
    return outs


def measure(mods: dict[str, ModuleType], rows: int, repeats: int, layers, head) -> dict[str, Any]:
    x = torch.randn(rows, HIDDEN, generator=torch.Generator().manual_seed(rows)).bfloat16()
    outs = {name: sweep(mod, x, layers, head) for name, mod in mods.items()}
    first = next(iter(outs.values()))
    equal = all(
        all(torch.equal(a, b) for a, b in zip(first, o, strict=True)) for o in outs.values()
    )

    def timed(mod: ModuleType) -> float:
        t = time.perf_counter()
        sweep(mod, x, layers, head)
        return (time.perf_counter() - t) * 1e3

    med = alternate(mods, repeats, timed)
    return {"rows": rows, "outputs_equal": equal, **figures(med, "ms", 2)}


def main() -> None:
    ap = parser(__doc__, repeats=11)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16, 24, 32, 48, 64])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    mods = builds(a.baseline)
    layers, head = weights(0)
    results = []
    for rows in a.rows:
        r = measure(mods, rows, a.repeats, layers, head)
        results.append(r)
        print(f"{rows:3d} rows: baseline {r['baseline_ms']:6.2f} ms  current {r['current_ms']:6.2f} ms  "
              f"{r['speedup']:.3f}x  equal {r['outputs_equal']}", flush=True)  # fmt: skip
    if a.output_json:
        write_report(
            a.output_json, "cpu_decode_gemm_ab", a.threads, a.baseline, layers=LAYERS, rows=results
        )


if __name__ == "__main__":
    main()
