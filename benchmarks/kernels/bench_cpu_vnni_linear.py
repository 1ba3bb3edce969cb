"""The CPU backend's bf16 GEMM on VNNI-packed weights (``native.linear_vnni``: torch's
batch-reduce GEMM ukernel with AMX, membound's AVX512-BF16 kernel without; the JSON's
``gemm_path`` says which; kernels/cpu_linear.py) against oneDNN's prepacked
``mkldnn._linear_pointwise`` (what a bf16 linear ran before, and still runs where neither
serves); and, for the gate/up shapes, the GEMM with SiLU-and-mul fused into its
epilogue (``native.linear_vnni_silu``) against the two calls it replaces.

    python benchmarks/kernels/bench_cpu_vnni_linear.py --threads 2 \\
        --output-json benchmarks/results/cpu_vnni_linear.json

Shapes: SmolLM2-135M (qkv 960x576, gate_up 3072x576, down 576x1536, LM head 49152x576) and
TinyLlama-1.1B (qkv 2560x2048, gate_up 11264x2048, down 2048x5632). Each timed call uses
another copy of the weight (copies over ~200 MB in all) so the weights stream from memory as
in a decode step. Wall time, best of 3 passes over the copies (run it on an idle machine).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import CPU_GATE_UP_SHAPES, CPU_GEMM_SHAPES, git_commit
from common import best_over_copies_us as best_us

from membound.bench.results import cpu_name
from membound.kernels.cpu_linear import pack_vnni
from membound.kernels.cpu_native import build_native_cpu_kernels


def measure(native, m: int, n: int, k: int) -> dict:
    """oneDNN vs linear_vnni for x [m, k] @ W^T, W [n, k], each call on another weight copy."""
    copies = max(2, int(2e8 // (n * k * 2)))
    ws = [torch.randn(n, k).bfloat16() for _ in range(copies)]
    onednn = [torch.ops.mkldnn._reorder_linear_weight(w) for w in ws]
    packed = [pack_vnni(w) for w in ws]
    x = torch.randn(m, k).bfloat16()
    ref = torch.nn.functional.linear(x, ws[0]).float()
    err = (native.linear_vnni(x, packed[0], n, None).float() - ref).abs().max() / ref.abs().max()
    t_dnn = best_us(lambda i: torch.ops.mkldnn._linear_pointwise(
        x, onednn[i], None, "none", [], ""), copies)  # fmt: skip
    t_brg = best_us(lambda i: native.linear_vnni(x, packed[i], n, None), copies)
    return {"rows": m, "out": n, "in": k, "onednn_us": round(t_dnn, 1),
            "native_us": round(t_brg, 1), "native_over_onednn": round(t_dnn / t_brg, 2),
            "onednn_weight_gbs": round(n * k * 2 / t_dnn / 1e3, 1),
            "native_weight_gbs": round(n * k * 2 / t_brg / 1e3, 1),
            "max_rel_err": float(f"{err:.1e}")}  # fmt: skip


def measure_silu(native, m: int, n: int, k: int) -> dict:
    """linear_vnni then silu_and_mul against linear_vnni_silu on a gate/up weight [n, k]."""
    copies = max(2, int(2e8 // (n * k * 2)))
    packed = [pack_vnni(torch.randn(n, k).bfloat16() / k**0.5) for _ in range(copies)]
    x = torch.randn(m, k).bfloat16()
    same = torch.equal(native.linear_vnni_silu(x, packed[0], n // 2, None),
                       native.silu_and_mul(native.linear_vnni(x, packed[0], n, None)))  # fmt: skip
    t_two = best_us(lambda i: native.silu_and_mul(native.linear_vnni(x, packed[i], n, None)),
                    copies)  # fmt: skip
    t_fused = best_us(lambda i: native.linear_vnni_silu(x, packed[i], n // 2, None), copies)
    return {"op": "gate_up+silu", "rows": m, "out": n, "in": k, "two_calls_us": round(t_two, 1),
            "fused_us": round(t_fused, 1), "fused_speedup": round(t_two / t_fused, 2),
            "bit_equal": same}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64, 512, 2048])
    p.add_argument("--output-json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    native = build_native_cpu_kernels()
    if not native.linear_supported(576):
        raise SystemExit(
            "no native bf16 GEMM on this CPU (neither AMX nor AVX512-BF16): nothing to compare"
        )
    rows = []
    for m in a.rows:
        for model, shapes in CPU_GEMM_SHAPES.items():
            for n, k in shapes:
                row = {"model": model, **measure(native, m, n, k)}
                print(json.dumps(row), flush=True)
                rows.append(row)
                if (n, k) in CPU_GATE_UP_SHAPES:
                    row = {"model": model, **measure_silu(native, m, n, k)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    if a.output_json:
        doc = {"benchmark": "cpu_vnni_linear", "commit": git_commit(), "threads": a.threads,
               "gemm_path": native.bf16_gemm_path(), "cpu": cpu_name(),
               "torch": torch.__version__, "timing": "wall, best of 3 passes", "rows": rows}  # fmt: skip
        Path(a.output_json).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
