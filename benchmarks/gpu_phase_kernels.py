"""Phase kernels: the trimmed kernel benchmarks, each against the measured copy bandwidth
(memory-bound cases) or a torch baseline on the same GPU (compute-bound ones).

- decode attention (Llama-3-8B heads, bf16, block 16): batch 1 and 32 at 4K context, batch 1
  at 16K: GB/s of K/V read vs copy bandwidth (bench_decode_attention.bytes_moved);
- prefill attention: one 2048-token causal prompt, TFLOP/s vs torch SDPA (GQA expanded);
- MoE gate/up grouped GEMM (8 experts, top-2, 4096 -> 2 x 14336): 1 and 256 tokens, GB/s
  of touched expert weights vs copy, time vs the per-expert torch loop (moe_gemm_ref);
- quantized GEMM, gate_up shape (28672 x 4096) at M = 1 and 256: INT4 (fused kernel at M=1,
  dequantize + GEMM at 256), FP8 and INT8 layers, each vs BF16 ``F.linear``.

The full sweeps are benchmarks/kernels/*.py and benchmarks/quantization/*.py. Dry run: tiny
shapes, fp32, the interpreter (timings meaningless there; the code paths are the point).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "kernels"))
from bench_decode_attention import bytes_moved  # noqa: E402
from gpu_phases import GB, PhaseResult, Target, copy_bandwidth_gbs, phase_args  # noqa: E402


def decode_attention(t: Target, res: PhaseResult, copy: float) -> None:
    from membound.kernels.paged_attention import paged_decode_attention

    h, kvh, d, bs = t.pick((32, 8, 128, 16), (4, 2, 16, 16))
    for batch, ctx in t.pick([(1, 4096), (32, 4096), (1, 16384)], [(1, 64), (2, 48)]):
        per = -(-ctx // bs)
        cache = torch.randn(2, batch * per, bs, kvh, d, dtype=t.dtype, device=t.device)
        tables = torch.randperm(batch * per, device=t.device).view(batch, per)
        lens = torch.full((batch,), ctx, dtype=torch.int32, device=t.device)
        q = torch.randn(batch, h, d, dtype=t.dtype, device=t.device)
        out = torch.empty_like(q)
        args = (q, cache, tables, lens, d**-0.5)
        ms = t.time_ms(lambda args=args, out=out: paged_decode_attention(*args, out=out))
        moved = bytes_moved(batch, ctx, h, kvh, d, cache.element_size(), per)
        gbs = moved / (ms / 1e3) / GB
        res.record(f"decode_attention/b{batch}/ctx{ctx}",
                   {"us": ms * 1e3, "gbs": gbs, "fraction_of_copy": gbs / copy},
                   f"decode attention batch {batch} ctx {ctx}: {ms * 1e3:.1f} us, {gbs:.0f} GB/s"
                   f" = {100 * gbs / copy:.0f}% of copy")  # fmt: skip


def prefill_attention(t: Target, res: PhaseResult) -> None:
    from membound.kernels.prefill_attention import varlen_attention

    h, kvh, d = t.pick((32, 8, 128), (4, 2, 16))
    n = t.pick(2048, 32)
    q = torch.randn(n, h, d, dtype=t.dtype, device=t.device)
    k, v = (torch.randn(n, kvh, d, dtype=t.dtype, device=t.device) for _ in range(2))
    qsl = torch.tensor([0, n], dtype=torch.int32, device=t.device)
    ms = t.time_ms(lambda: varlen_attention(q, k, v, qsl, d**-0.5, max_query_len=n))
    qt = q.transpose(0, 1)[None]
    kt = k.repeat_interleave(h // kvh, 1).transpose(0, 1)[None]
    vt = v.repeat_interleave(h // kvh, 1).transpose(0, 1)[None]
    base = t.time_ms(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True))
    flops = 2 * 2 * h * d * n * n / 2  # QK^T and PV over the causal half
    res.record(f"prefill_attention/{n}",
               {"us": ms * 1e3, "tflops": flops / (ms / 1e3) / 1e12, "sdpa_us": base * 1e3,
                "speedup_vs_sdpa": base / ms},
               f"prefill attention {n} tokens: {ms * 1e3:.1f} us "
               f"({flops / (ms / 1e3) / 1e12:.1f} TFLOP/s) vs torch SDPA {base * 1e3:.1f} us")  # fmt: skip


def moe(t: Target, res: PhaseResult, copy: float) -> None:
    from membound.kernels.moe_gemm import moe_align, moe_gemm, moe_gemm_ref

    e, top_k, hid, inter = t.pick((8, 2, 4096, 14336), (4, 2, 64, 64))
    w = torch.randn(e, 2 * inter, hid, dtype=t.dtype, device=t.device) * 0.02
    for tokens in t.pick((1, 256), (1, 6)):
        x = torch.randn(tokens, hid, dtype=t.dtype, device=t.device)
        ids = torch.stack([torch.randperm(e, device=t.device)[:top_k] for _ in range(tokens)])
        al = moe_align(ids, e)
        args = (al.sorted_token_ids, al.expert_ids, al.num_pairs, al.block_m, top_k)
        ms = t.time_ms(lambda x=x, args=args: moe_gemm(x, w, *args))
        base = t.time_ms(lambda x=x, args=args: moe_gemm_ref(x, w, *args))
        touched = int(torch.unique(ids).numel())
        gbs = touched * w[0].numel() * w.element_size() / (ms / 1e3) / GB
        res.record(f"moe_gemm/t{tokens}",
                   {"us": ms * 1e3, "gbs": gbs, "fraction_of_copy": gbs / copy,
                    "torch_loop_us": base * 1e3, "speedup_vs_torch": base / ms},
                   f"moe gate/up {tokens} tokens ({touched} experts): {ms * 1e3:.1f} us "
                   f"{gbs:.0f} GB/s = {100 * gbs / copy:.0f}% of copy; torch loop {base * 1e3:.1f} us")  # fmt: skip


def quant_layer(t: Target, method: str, n: int, k: int, w: torch.Tensor) -> Any:
    from membound.config import QuantizationConfig
    from membound.layers.linear import Linear
    from membound.layers.quantization import get_linear_method

    qm = get_linear_method(QuantizationConfig.for_float_checkpoint(method), ["bench"])
    old = torch.get_default_dtype()
    torch.set_default_dtype(t.dtype)
    try:
        with torch.device(t.device):
            layer = Linear(k, n, quant_method=qm, prefix=f"bench.{method}")
    finally:
        torch.set_default_dtype(old)
    layer.quant_method.quantize_rows(layer, w, (0, n))
    layer.process_weights_after_loading()
    return layer


def quant_gemm(t: Target, res: PhaseResult, copy: float) -> None:
    from membound.kernels.int4_gemm import int4_gemm

    n, k = t.pick((28672, 4096), (96, 128))
    w = torch.randn(n, k, device=t.device) * 0.02
    wb = w.to(t.dtype)
    layers = {m: quant_layer(t, m, n, k, w) for m in ("int4", "fp8", "int8")}
    i4 = layers["int4"]
    i4_args = (i4.qweight, i4.scales, i4.zeros, i4.group_size, i4.perm)
    for m in t.pick((1, 256), (1, 20)):
        x = torch.randn(m, k, dtype=t.dtype, device=t.device)
        base = t.time_ms(lambda x=x: F.linear(x, wb))
        calls = {"int4": lambda x=x: int4_gemm(x, *i4_args),
                 "fp8": lambda x=x: layers["fp8"](x), "int8": lambda x=x: layers["int8"](x)}  # fmt: skip
        for fmt, fn in calls.items():
            ms = t.time_ms(fn)
            wbytes = sum(p.numel() * p.element_size() for p in layers[fmt].parameters())
            gbs = (wbytes + 2 * m * (n + k)) / (ms / 1e3) / GB
            res.record(f"quant_gemm/{fmt}/m{m}",
                       {"us": ms * 1e3, "bf16_us": base * 1e3, "speedup_vs_bf16": base / ms,
                        "gbs": gbs, "fraction_of_copy": gbs / copy},
                       f"gate_up {fmt:5s} M={m:4d}: {ms * 1e3:8.1f} us vs bf16 {base * 1e3:8.1f}"
                       f" us (x{base / ms:.2f}), {gbs:.0f} GB/s")  # fmt: skip


def main() -> int:
    _, t, res = phase_args("kernels", __doc__)
    run(t, res)
    return res.exit_code()


def run(t: Target, res: PhaseResult) -> None:
    """Every measurement of the phase, each recorded in ``res`` as it completes."""
    torch.manual_seed(0)
    copy = res.attempt("copy bandwidth", lambda: copy_bandwidth_gbs(t)) or float("nan")
    res.record("copy_bandwidth_gbs", copy, f"copy bandwidth {copy:.0f} GB/s")
    with torch.inference_mode():
        res.attempt("decode_attention", lambda: decode_attention(t, res, copy))
        res.attempt("prefill_attention", lambda: prefill_attention(t, res))
        res.attempt("moe_gemm", lambda: moe(t, res, copy))
        res.attempt("quant_gemm", lambda: quant_gemm(t, res, copy))


if __name__ == "__main__":
    sys.exit(main())
