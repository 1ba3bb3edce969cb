"""An experiment, not a shipped kernel: bf16 GEMMs through torch's batch-reduce GEMM ukernel
(``at::native::cpublas::brgemm``, the one the native prefill attention uses) on weights
packed for it, against oneDNN's prepacked ``mkldnn._linear_pointwise`` (what the CPU backend
runs). The ukernel's packed B holds 64 output columns per block, so the weight is packed in
[K, 64] VNNI blocks; one call per (block, tile of rows), float32 out, rounded to bf16.

    python benchmarks/kernels/bench_cpu_brgemm_linear.py --threads 2 \\
        --output-json benchmarks/results/cpu_brgemm_linear.json

Shapes: SmolLM2-135M (qkv 960x576, gate_up 3072x576, down 576x1536, LM head 49152x576) and
TinyLlama-1.1B (qkv 2560x2048, gate_up 11264x2048, down 2048x5632). Each timed call uses
another copy of the weight (copies over ~200 MB in all) so the weights stream from memory as
in a decode step. Wall time, best of 3 passes over the copies (run it on an idle machine).
Why it is not shipped: docs/benchmarks.md, run 5.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import git_commit

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
namespace cpublas = at::native::cpublas;
constexpr int64_t NB = 64;  // output columns per packed block (the ukernel's largest)
constexpr int64_t MT = 256;  // rows per call

// W [N, K] bf16 -> [ceil(N / 64), K * 64]: each block the ukernel's VNNI layout of W^T
at::Tensor pack_weight(const at::Tensor& w) {
  const int64_t N = w.size(0), K = w.size(1), nb = (N + NB - 1) / NB;
  at::Tensor wt = at::zeros({K, nb * NB}, w.options());
  wt.narrow(1, 0, N).copy_(w.t());
  at::Tensor out = at::empty({nb, K * NB}, w.options());
  for (int64_t b = 0; b < nb; ++b)
    cpublas::pack(K, NB, nb * NB, NB, at::kBFloat16, at::kBFloat16,
                  wt.data_ptr<at::BFloat16>() + b * NB, out.data_ptr<at::BFloat16>() + b * K * NB);
  return out;
}

// x [M, K] bf16 @ W^T -> [M, N] bf16; tasks (row tile, column block) over the threads
at::Tensor linear(const at::Tensor& x, const at::Tensor& packed, int64_t N) {
  const int64_t M = x.size(0), K = x.size(1), nb = packed.size(0), mt = (M + MT - 1) / MT;
  at::Tensor y = at::empty({M, N}, x.options());
  const at::BFloat16* xp = x.data_ptr<at::BFloat16>();
  const at::BFloat16* wp = packed.data_ptr<at::BFloat16>();
  at::BFloat16* yp = y.data_ptr<at::BFloat16>();
  at::parallel_for(0, nb * mt, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> c(MT * NB);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t % nb, m0 = (t / nb) * MT, m = std::min(MT, M - m0);
      cpublas::brgemm(m, NB, K, K, NB, NB, false, xp + m0 * K, wp + b * K * NB, c.data(), true);
      const int64_t n0 = b * NB, nn = std::min(NB, N - n0);
      for (int64_t i = 0; i < m; ++i) {
        if (nn == NB) {
          for (int64_t j = 0; j < NB; j += 16)
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(yp + (m0 + i) * N + n0 + j),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(c.data() + i * NB + j)));
        } else {
          for (int64_t j = 0; j < nn; ++j) yp[(m0 + i) * N + n0 + j] = at::BFloat16(c[i * NB + j]);
        }
      }
    }
    cpublas::brgemm_release(true);
  });
  return y;
}
"""

SHAPES = {"smollm2": [(960, 576), (3072, 576), (576, 1536), (49152, 576)],
          "tinyllama": [(2560, 2048), (11264, 2048), (2048, 5632)]}  # fmt: skip


def best_us(fn, copies: int) -> float:
    for i in range(copies):
        fn(i)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for i in range(copies):
            fn(i)
        best = min(best, (time.perf_counter() - t) / copies)
    return best * 1e6


def measure(ext, m: int, n: int, k: int) -> dict:
    """oneDNN vs the ukernel for x [m, k] @ W^T, W [n, k], each call on another weight copy."""
    copies = max(2, int(2e8 // (n * k * 2)))
    ws = [torch.randn(n, k).bfloat16() for _ in range(copies)]
    onednn = [torch.ops.mkldnn._reorder_linear_weight(w) for w in ws]
    packed = [ext.pack_weight(w) for w in ws]
    x = torch.randn(m, k).bfloat16()
    ref = torch.nn.functional.linear(x, ws[0]).float()
    err = (ext.linear(x, packed[0], n).float() - ref).abs().max() / ref.abs().max()
    t_dnn = best_us(lambda i: torch.ops.mkldnn._linear_pointwise(
        x, onednn[i], None, "none", [], ""), copies)  # fmt: skip
    t_brg = best_us(lambda i: ext.linear(x, packed[i], n), copies)
    return {"rows": m, "out": n, "in": k, "onednn_us": round(t_dnn, 1),
            "brgemm_us": round(t_brg, 1), "brgemm_over_onednn": round(t_dnn / t_brg, 2),
            "onednn_weight_gbs": round(n * k * 2 / t_dnn / 1e3, 1),
            "brgemm_weight_gbs": round(n * k * 2 / t_brg / 1e3, 1),
            "max_rel_err": float(f"{err:.1e}")}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64, 512, 2048])
    p.add_argument("--output-json", default=None)
    a = p.parse_args()
    from torch.utils.cpp_extension import load_inline

    torch.set_num_threads(a.threads)
    ext = load_inline("membound_bench_brgemm_linear", cpp_sources=SOURCE,
                      functions=["pack_weight", "linear"],
                      extra_cflags=["-O3", "-march=native", "-fopenmp"],
                      extra_ldflags=["-fopenmp"])  # fmt: skip
    rows = []
    for m in a.rows:
        for model, shapes in SHAPES.items():
            for n, k in shapes:
                row = {"model": model, **measure(ext, m, n, k)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    if a.output_json:
        doc = {"benchmark": "cpu_brgemm_linear", "commit": git_commit(), "threads": a.threads,
               "torch": torch.__version__, "timing": "wall, best of 3 passes", "rows": rows}  # fmt: skip
        Path(a.output_json).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
