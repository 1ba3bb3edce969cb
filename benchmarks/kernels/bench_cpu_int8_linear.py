"""The native INT8 W8A8 GEMM (``native.linear_int8``, AVX512-VNNI; kernels/cpu_quant_linear.py)
against the bf16 GEMM it stands beside (``native.linear_vnni``) and, up to the rows where the
int8 layers used it before, torch's weight-only ``_weight_int8pack_mm``; plus the gate/up
shapes with SiLU-and-mul fused (``linear_int8_silu`` against ``linear_vnni_silu``). The int8
GEMM runs with membound's own activation groups of 64 inputs (``int8_*``) and with one scale
per token (``int8_per_token_us``: a W8A8 checkpoint's declared numerics, vLLM's).

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/kernels/bench_cpu_int8_linear.py \\
        --threads 2 --output-json benchmarks/results/cpu_int8_linear.json

Shapes as bench_cpu_vnni_linear.py (SmolLM2-135M and TinyLlama-1.1B). Each timed call uses
another copy of the weight (~200 MB of copies per kernel) so the weights stream from memory
as in a decode step; the int8 time includes quantizing the activations. Wall time, best of 3
passes over the copies. ``*_gflops`` counts 2 m n k; ``*_weight_gbs`` the weight's bytes.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from common import CPU_GATE_UP_SHAPES, CPU_GEMM_SHAPES, git_commit
from common import best_over_copies_us as best_us

from membound.bench.results import cpu_name
from membound.kernels.cpu_linear import pack_vnni
from membound.kernels.cpu_native import build_native_cpu_kernels
from membound.kernels.cpu_quant_linear import (
    INT8_ACT_GROUP,
    INT8_KERNEL_MAX_ROWS,
    int8_grouped_linear_ref,
    pack_int8_vnni,
    quantize_int8,
)


def measure(native, m: int, n: int, k: int, silu: bool) -> dict:
    copies = max(2, int(2e8 // (n * k * 2)))
    ws = [torch.randn(n, k) / k**0.5 for _ in range(copies)]
    bf16 = [pack_vnni(w.bfloat16()) for w in ws]
    quant = [quantize_int8(w) for w in ws]
    int8 = [(pack_int8_vnni(q), s.reshape(-1)) for q, s in quant]
    x = torch.randn(m, k).bfloat16()
    ref = int8_grouped_linear_ref(x, quant[0][0], quant[0][1].reshape(-1), None)
    got = native.linear_int8(x, *int8[0], n, 0.0, None, INT8_ACT_GROUP).float()
    err = (got - ref).abs().max() / ref.abs().max()

    def t_int8(group: int) -> float:  # activations in groups of `group` inputs
        if silu:
            return best_us(lambda i: native.linear_int8_silu(x, *int8[i], n // 2, 0.0, None, group),
                           copies)  # fmt: skip
        return best_us(lambda i: native.linear_int8(x, *int8[i], n, 0.0, None, group), copies)

    if silu:
        t_bf16 = best_us(lambda i: native.linear_vnni_silu(x, bf16[i], n // 2, None), copies)
    else:
        t_bf16 = best_us(lambda i: native.linear_vnni(x, bf16[i], n, None), copies)
    t_grouped, t_token = t_int8(INT8_ACT_GROUP), t_int8(k)
    row = {"op": "gate_up+silu" if silu else "linear", "rows": m, "out": n, "in": k,
           "bf16_us": round(t_bf16, 1), "int8_us": round(t_grouped, 1),
           "int8_over_bf16": round(t_bf16 / t_grouped, 2),
           "int8_per_token_us": round(t_token, 1),
           "per_token_over_grouped": round(t_grouped / t_token, 2),
           "bf16_gflops": round(2 * m * n * k / t_bf16 / 1e3, 1),
           "int8_gops": round(2 * m * n * k / t_grouped / 1e3, 1),
           "int8_weight_gbs": round(n * k / t_grouped / 1e3, 1),
           "max_rel_err_vs_ref": float(f"{err:.1e}")}  # fmt: skip
    if not silu and m <= INT8_KERNEL_MAX_ROWS:  # the weight-only kernel the layers ran
        wo = [(q, s.reshape(-1).bfloat16()) for q, s in quant]
        t_wo = best_us(lambda i: torch.ops.aten._weight_int8pack_mm(x, *wo[i]), copies)
        row.update(weight_only_us=round(t_wo, 1), int8_over_weight_only=round(t_wo / t_grouped, 2))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64, 512, 2048])
    p.add_argument("--output-json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    native = build_native_cpu_kernels()
    if not (native.int8_linear_supported(576) and native.linear_supported(576)):
        raise SystemExit("needs the native int8 (AVX512-VNNI) and bf16 GEMMs on this CPU")
    rows = []
    for m in a.rows:
        for model, shapes in CPU_GEMM_SHAPES.items():
            for n, k in shapes:
                for silu in (False, True) if (n, k) in CPU_GATE_UP_SHAPES else (False,):
                    row = {"model": model, **measure(native, m, n, k, silu)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    if a.output_json:
        doc = {"benchmark": "cpu_int8_linear", "commit": git_commit(), "threads": a.threads,
               "gemm_path": native.bf16_gemm_path(), "cpu": cpu_name(),
               "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
               "torch": torch.__version__, "timing": "wall, best of 3 passes", "rows": rows}  # fmt: skip
        Path(a.output_json).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
