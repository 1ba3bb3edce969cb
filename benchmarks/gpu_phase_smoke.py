"""Phase smoke: every Triton kernel once at Llama-3-8B shapes in bf16 against its plain-torch
reference (computed in fp32 from the same inputs; decode attention also over an FP8 KV
cache), plus FP8 ``torch._scaled_mm`` and INT8 ``torch._int_mm`` against their references. Each check is independent: a failure is
recorded with its error and the next one runs. Dry run: tiny shapes, fp32, the interpreter.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_phases import PhaseResult, Target, phase_args  # noqa: E402

TOL = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 6e-2}


def shapes(t: Target) -> dict[str, int]:
    """Llama-3-8B (hidden 4096, 32 q / 8 KV heads of 128, MLP 14336) or the dry run's tiny."""
    return t.pick(
        {"tokens": 256, "hidden": 4096, "heads": 32, "kv_heads": 8, "head_dim": 128,
         "inter": 14336, "batch": 8, "context": 2048, "block": 16, "experts": 8, "top_k": 2},
        {"tokens": 8, "hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16,
         "inter": 64, "batch": 2, "context": 40, "block": 16, "experts": 4, "top_k": 2},
    )  # fmt: skip


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.float(), ref.float()
    if not torch.isfinite(got).all():
        return math.inf
    return float((got - ref).abs().max() / ref.abs().max().clamp(min=1e-6))


def check(res: PhaseResult, name: str, dtype: torch.dtype, fn: Callable[[], tuple]) -> None:
    """fn() -> (kernel output, reference output); records the relative max error."""

    def run() -> None:
        got, ref = fn()
        err = rel_err(got, ref)
        ok = err <= TOL[dtype]
        res.record(name, {"rel_max_err": err, "tol": TOL[dtype], "ok": ok},
                   f"{name:28s} rel err {err:.2e} (tol {TOL[dtype]:.0e}) {'ok' if ok else 'BAD'}")  # fmt: skip
        if not ok:
            res.fail(name, f"relative error {err:.3e} above {TOL[dtype]:.0e}")

    res.attempt(name, run)


def rand(t: Target, *shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.randn(*shape, device=t.device, dtype=dtype or t.dtype)


def elementwise(t: Target, s: dict[str, int], res: PhaseResult) -> None:
    from membound.kernels import activation, rms_norm, rotary

    x, w = rand(t, s["tokens"], s["hidden"]), rand(t, s["hidden"])
    check(res, "rms_norm", t.dtype,
          lambda: (rms_norm.rms_norm(x, w, 1e-5), rms_norm.rms_norm_ref(x.float(), w.float(), 1e-5)))  # fmt: skip
    r = rand(t, s["tokens"], s["hidden"])
    check(res, "fused_add_rms_norm", t.dtype, lambda: (
        rms_norm.fused_add_rms_norm(x, r, w, 1e-5)[0],
        rms_norm.fused_add_rms_norm_ref(x.float(), r.float(), w.float(), 1e-5)[0]))  # fmt: skip
    gu = rand(t, s["tokens"], 2 * s["inter"])
    check(res, "silu_and_mul", t.dtype,
          lambda: (activation.silu_and_mul(gu), activation.silu_and_mul_ref(gu.float())))  # fmt: skip
    n, d = s["tokens"], s["head_dim"]
    q, k = rand(t, n, s["heads"], d), rand(t, n, s["kv_heads"], d)
    ang = torch.rand(n, d // 2, device=t.device) * 6.28
    cos, sin = ang.cos().to(t.dtype), ang.sin().to(t.dtype)

    def rope() -> tuple:
        q1, k1, q2, k2 = q.clone(), k.clone(), q.float(), k.float()
        rotary.rotary_embedding(q1, k1, cos, sin)
        rotary.rotary_embedding_ref(q2, k2, cos.float(), sin.float())
        return torch.cat([q1.flatten(), k1.flatten()]), torch.cat([q2.flatten(), k2.flatten()])

    check(res, "rotary_embedding", t.dtype, rope)


def paged(t: Target, s: dict[str, int], res: PhaseResult) -> None:
    from membound.kernels import kv_store, paged_attention, prefill_attention

    b, ctx, bs, kvh, d, h = (s[k] for k in ("batch", "context", "block", "kv_heads",
                                            "head_dim", "heads"))  # fmt: skip
    per_seq = -(-ctx // bs)
    cache = rand(t, 2, b * per_seq + 1, bs, kvh, d)
    tables = torch.randperm(b * per_seq, device=t.device).view(b, per_seq).to(torch.int32)
    lens = torch.full((b,), ctx, dtype=torch.int32, device=t.device)
    q = rand(t, b, h, d)
    for splits in (1, 4):
        check(res, f"paged_decode_attention/s{splits}", t.dtype, lambda splits=splits: (
            paged_attention.paged_decode_attention(q, cache, tables, lens, d**-0.5,
                                                   num_splits=splits),
            paged_attention.paged_decode_attention_ref(q.float(), cache.float(), tables, lens,
                                                       d**-0.5)))  # fmt: skip
    new = min(ctx, t.pick(512, 12))
    qp = rand(t, b * new, h, d)
    qsl = torch.arange(0, b * new + 1, new, device=t.device, dtype=torch.int32)
    check(res, "prefill_attention", t.dtype, lambda: (
        prefill_attention.prefill_attention(qp, cache, tables, qsl, lens, d**-0.5,
                                            max_query_len=new),
        prefill_attention.prefill_attention_ref(qp.float(), cache.float(), tables, qsl, lens,
                                                d**-0.5, max_query_len=new)))  # fmt: skip
    kk, vv = rand(t, b * new, kvh, d), rand(t, b * new, kvh, d)
    check(res, "varlen_attention", t.dtype, lambda: (
        prefill_attention.varlen_attention(qp, kk, vv, qsl, d**-0.5, max_query_len=new),
        prefill_attention.varlen_attention_ref(qp.float(), kk.float(), vv.float(), qsl, d**-0.5,
                                               max_query_len=new)))  # fmt: skip
    slots = torch.randperm(cache.shape[1] * bs, device=t.device)[: b * new]

    def store() -> tuple:
        c1, c2 = cache.clone(), cache.float()
        kv_store.store_kv(kk, vv, c1, slots)
        kv_store.store_kv_ref(kk.float(), vv.float(), c2, slots)
        return c1, c2

    check(res, "store_kv", t.dtype, store)
    fp8_kv(t, q, cache, tables, lens, res)


def fp8_kv(t: Target, q: torch.Tensor, cache: torch.Tensor, tables: torch.Tensor,
           lens: torch.Tensor, res: PhaseResult) -> None:  # fmt: skip
    """Decode attention over an FP8 (E4M3) cache with per-tensor scales, against the
    reference reading the same FP8 cache."""
    from membound.kernels import paged_attention
    from membound.kernels.kv_quant import FP8_KV_DTYPE, quantize_kv_ref

    d, ks, vs = q.shape[-1], 0.02, 0.03
    c8 = torch.stack([quantize_kv_ref(cache[0], ks, FP8_KV_DTYPE),
                      quantize_kv_ref(cache[1], vs, FP8_KV_DTYPE)])  # fmt: skip
    check(res, "paged_decode_attention/fp8kv", t.dtype, lambda: (
        paged_attention.paged_decode_attention(q, c8, tables, lens, d**-0.5, num_splits=4,
                                               k_scale=ks, v_scale=vs),
        paged_attention.paged_decode_attention_ref(q.float(), c8, tables, lens, d**-0.5,
                                                   k_scale=ks, v_scale=vs)))  # fmt: skip


def gemms(t: Target, s: dict[str, int], res: PhaseResult) -> None:
    from membound.kernels import int4_gemm as i4
    from membound.kernels import moe_gemm as mg

    e, top_k, hid, inter = s["experts"], s["top_k"], s["hidden"], s["inter"]
    n_tok = t.pick(64, 5)
    x = rand(t, n_tok, hid)
    w = rand(t, e, inter, hid) * 0.02
    ids = torch.stack([torch.randperm(e, device=t.device)[:top_k] for _ in range(n_tok)])
    al = mg.moe_align(ids, e)
    args = (al.sorted_token_ids, al.expert_ids, al.num_pairs, al.block_m, top_k)
    check(res, "moe_gemm", t.dtype,
          lambda: (mg.moe_gemm(x, w, *args), mg.moe_gemm_ref(x.float(), w.float(), *args)))  # fmt: skip
    k, n, g = hid, t.pick(inter, 96), t.pick(128, 32)
    qw = i4.pack_int4(torch.randint(0, 16, (k, n), device=t.device), 0)
    sc = (torch.rand(k // g, n, device=t.device) * 0.02 + 0.005).to(t.dtype)
    z = torch.randint(0, 16, (k // g, n), device=t.device, dtype=torch.uint8)
    for m, fused in ((1, True), (t.pick(64, 20), False)):
        xm = rand(t, m, k)
        check(res, f"int4_gemm/m{m}", t.dtype, lambda xm=xm, fused=fused: (
            i4.int4_gemm(xm, qw, sc, z, g, fused=fused),
            i4.int4_gemm_ref(xm.float(), qw, sc.float(), z, g)))  # fmt: skip


def scaled_mms(t: Target, s: dict[str, int], res: PhaseResult) -> None:
    from membound.layers.quantization import fp8, int8

    k, n, m = s["hidden"], s["inter"], t.pick(64, 24)
    x = rand(t, m, k)
    w = rand(t, n, k) * 0.02
    if fp8.supports_fp8_matmul(t.device):
        wq, ws = fp8.quantize_fp8(w)
        check(res, "fp8 torch._scaled_mm", t.dtype, lambda: (
            fp8.fp8_linear_scaled_mm(x, wq, ws.reshape(-1), None, out_dtype=t.dtype),
            fp8.fp8_linear_ref(x, wq, ws.reshape(-1), None)))  # fmt: skip
    else:
        res.record(
            "fp8 torch._scaled_mm",
            {"skipped": "needs a CUDA GPU of capability >= 8.9"},
            "fp8 torch._scaled_mm: skipped (needs a CUDA GPU of capability >= 8.9)",
        )
    wq8, ws8 = int8.quantize_int8(w)
    check(res, "int8 torch._int_mm", t.dtype, lambda: (
        int8.int8_linear_int_mm(x, wq8, ws8.reshape(-1), None),
        int8.int8_linear_ref(x, wq8, ws8.reshape(-1), None)))  # fmt: skip


def main() -> int:
    _, t, res = phase_args("smoke", __doc__)
    run(t, res)
    return res.exit_code()


def run(t: Target, res: PhaseResult) -> None:
    """Every measurement of the phase, each recorded in ``res`` as it completes."""
    torch.manual_seed(0)
    s = shapes(t)
    res.record("shapes", s)
    with torch.inference_mode():
        for group in (elementwise, paged, gemms, scaled_mms):
            res.attempt(group.__name__, lambda group=group: group(t, s, res))
    checks: Any = {k: v for k, v in res.results.items() if isinstance(v, dict) and "ok" in v}
    res.record("passed", sum(v["ok"] for v in checks.values()), f"{len(checks)} checks run")


if __name__ == "__main__":
    sys.exit(main())
