"""GEMM / GEMV per weight format vs BF16 across batch sizes (GPU; not yet run).

Llama-3-8B linear shapes (N x K): qkv 6144x4096, o 4096x4096, gate_up 28672x4096,
down 4096x14336. For each format and batch size M the layer's own ``apply`` is timed (so FP8
and INT8 include quantizing the activations), with L2 flushed between calls:

    TFLOP/s = 2 M N K / t        GB/s = (weight bytes incl. scales + x + y) / t

and the speed-up over BF16 at the same M. INT4 is timed both ways at every M ("int4" = the
Triton dequantize-in-the-GEMM kernel, "int4-dequant" = dequantize + cuBLAS) to place the
crossover (``FUSED_MAX_ROWS`` in kernels/int4_gemm.py). Target (issue 6): INT4 GEMV at
M=1 at least 3x BF16. Writes benchmarks/results/quant-gemm-<device>.json and .log.

    PYTHONPATH=src python benchmarks/quantization/bench_quant_gemm.py
    PYTHONPATH=src python benchmarks/quantization/bench_quant_gemm.py --formats bf16 int4 --m 1 16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
from common import GB, Report, copy_bandwidth_gbs, require_cuda, time_ms  # noqa: E402

from membound.config import QuantizationConfig  # noqa: E402
from membound.kernels.contract import TRITON_OPS  # noqa: E402
from membound.kernels.int4_gemm import int4_gemm  # noqa: E402
from membound.layers.linear import Linear  # noqa: E402
from membound.layers.quantization import get_linear_method  # noqa: E402

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
          "down": (4096, 14336)}  # fmt: skip
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096]
FORMATS = ["bf16", "fp8", "int8", "int4", "int4-dequant", "mxfp4", "nvfp4"]


def build(fmt: str, n: int, k: int, dev: torch.device) -> Linear:
    method = fmt.removesuffix("-dequant")
    qm = None if method == "bf16" else get_linear_method(
        QuantizationConfig.for_float_checkpoint(method), ["bench"])
    with torch.device(dev):
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            layer = Linear(k, n, quant_method=qm, prefix=f"bench.{fmt}", ops=TRITON_OPS)
        finally:
            torch.set_default_dtype(old)
    w = torch.randn(n, k, device=dev, dtype=torch.float32) * 0.02
    layer.quant_method.quantize_rows(layer, w, (0, n))
    layer.process_weights_after_loading()
    return layer


def call(fmt: str, layer: Linear, x: torch.Tensor):  # type: ignore[no-untyped-def]
    if fmt in ("int4", "int4-dequant"):  # the fused kernel / dequantize + GEMM at every M
        args = (layer.qweight, layer.scales, layer.zeros, layer.group_size, layer.perm)
        return lambda: int4_gemm(x, *args, fused=fmt == "int4")
    if fmt == "bf16":
        return lambda: F.linear(x, layer.weight)
    return lambda: layer(x)


def weight_bytes(layer: Linear) -> int:
    return sum(p.numel() * p.element_size() for p in layer.parameters())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--formats", nargs="+", default=FORMATS, choices=FORMATS)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--m", type=int, nargs="+", default=BATCHES)
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/)")
    args = p.parse_args()
    dev = require_cuda()
    report = Report("quant-gemm", {"formats": args.formats, "shapes": {s: SHAPES[s] for s in
                    args.shapes}, "batches": args.m, "activation_dtype": "bfloat16"},
                    args.output)  # fmt: skip
    copy_gbs = copy_bandwidth_gbs()
    report.log(f"measured copy bandwidth {copy_gbs:.0f} GB/s")
    bf16_us: dict[tuple[str, int], float] = {}
    for shape in args.shapes:
        n, k = SHAPES[shape]
        for fmt in args.formats:
            layer = build(fmt, n, k, dev)
            wbytes = weight_bytes(layer)
            for m in args.m:
                x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
                ms = time_ms(call(fmt, layer, x))
                moved = wbytes + 2 * m * (k + n)
                us = ms * 1e3
                if fmt == "bf16":
                    bf16_us[(shape, m)] = us
                base = bf16_us.get((shape, m))
                row = {"shape": shape, "n": n, "k": k, "format": fmt, "m": m, "time_us": us,
                       "weight_bytes": wbytes, "tflops": 2 * m * n * k / (ms / 1e3) / 1e12,
                       "gbs": moved / (ms / 1e3) / GB,
                       "speedup_vs_bf16": base / us if base else None}  # fmt: skip
                report.row(row, f"{shape:8s} {fmt:13s} M={m:5d} {us:9.1f} us "
                           f"{row['tflops']:7.1f} TFLOP/s {row['gbs']:7.0f} GB/s "
                           f"({100 * row['gbs'] / copy_gbs:5.1f}% of copy)"
                           + (f" x{row['speedup_vs_bf16']:.2f} vs bf16" if base else ""))
            del layer
            torch.cuda.empty_cache()
    gemv = [r for r in report.doc["rows"] if r["m"] == 1 and r["speedup_vs_bf16"]]
    report.write({
        "copy_bandwidth_gbs": copy_gbs,
        "gemv_speedup_vs_bf16": {f"{r['shape']}/{r['format']}": r["speedup_vs_bf16"]
                                 for r in gemv},
    })


if __name__ == "__main__":
    main()
