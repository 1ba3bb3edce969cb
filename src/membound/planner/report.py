"""Render plans, calibrations and audits: a terminal table or a JSON document."""

from __future__ import annotations

import json
from typing import Any

from membound.planner.audit import Verdict
from membound.planner.bench_model import Comparison
from membound.planner.calibrate import Calibration, Fit
from membound.planner.hardware import GIB
from membound.planner.plan import OptionResult, PlanResult, plan_to_dict


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]  # fmt: skip

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _option_row(o: OptionResult) -> list[str]:
    e, b, m = o.expected, o.bound, o.memory
    return [
        o.gpu.name,
        str(o.tp),
        "yes" if m.fits else "NO",
        f"{o.cost.weight_bytes_per_gpu / GIB:.1f}",
        _num(m.max_kv_tokens),
        _num(m.max_concurrent_seqs),
        _num(e.ttft_s * 1e3, ",.1f"),
        _num(e.tpot_s * 1e3, ",.2f"),
        f"{_num(e.output_tokens_per_s)} ({_num(b.output_tokens_per_s)})",
        "/".join(b[0].upper() for b in (e.prefill_one.bound, e.decode.bound, e.throughput_bound)),
        _num(o.money.cost_per_million_tokens, ",.2f"),
        _num(o.money.joules_per_token, ".3f"),
        {True: "yes", False: "no", None: ""}[o.meets_targets],
    ]


_PLAN_HEADERS = ["GPU", "TP", "fits", "weights GiB/GPU", "KV tokens", "max seqs", "TTFT ms",
                 "TPOT ms", "tok/s (bound)", "bound", "$/M tok", "J/tok", "meets"]  # fmt: skip


def render_plan_text(result: PlanResult) -> str:
    """A readable table with the recommendation, notes and assumptions under it."""
    req = result.request
    w, params = req.workload, result.options[0].cost.params if result.options else None
    size = f"{params.total / 1e9:.2f} B params" if params else ""
    if params and params.active != params.total:
        size += f", {params.active / 1e9:.2f} B active"
    lines = [
        f"model {req.shape.name} ({size}); weights {req.precision}, KV cache {req.kv_dtype}; "
        f"{w.input_len} in / {w.output_len} out tokens, concurrency {w.concurrency}",
        "",
        *_table(_PLAN_HEADERS, [_option_row(o) for o in result.options]),
        "",
    ]
    best = result.recommendation
    if best is None:
        lines.append(f"recommendation: none ({result.recommendation_reason})")
    else:
        lines.append(
            f"recommendation: {best.tp} x {best.gpu.display_name} ({result.recommendation_reason})"
        )
    lines += _notes_lines(result.options)
    lines += ["", "assumptions:", *_assumptions(result)]
    return "\n".join(lines)


def _notes_lines(options: tuple[OptionResult, ...]) -> list[str]:
    """Notes shared by every option once, then each option's own."""
    shared = [n for n in dict.fromkeys(n for o in options for n in o.notes)
              if all(n in o.notes for o in options)]  # fmt: skip
    own = [f"  {o.gpu.name} TP{o.tp}: {n}" for o in options for n in o.notes if n not in shared]
    lines = [f"  all options: {n}" for n in shared] + own
    return ["", "notes:", *lines] if lines else []


def _assumptions(result: PlanResult) -> list[str]:
    req = result.request
    lim = req.limits
    out = [
        f"  memory: {lim.gpu_memory_utilization:.0%} of each GPU, "
        f"{lim.runtime_overhead_bytes / GIB:.1f} GiB runtime overhead, activations of a "
        f"{lim.max_num_batched_tokens}-token step; fits = KV room for one whole sequence",
        "  tok/s: steady-state output tokens/s incl. prefill; (bound) = same at 100% efficiency",
        "  bound: what governs TTFT/TPOT/tok/s: M = memory bandwidth, C = compute",
    ]
    seen: set[str] = set()
    for o in result.options:
        eff = o.efficiency
        text = (f"efficiency memory {eff.memory:.2f}, compute {eff.compute:.2f}, "
                f"interconnect {eff.interconnect:.2f}: {eff.source}")  # fmt: skip
        key = f"{text}|{o.money.price_label}"
        if key in seen:
            continue
        seen.add(key)
        out.append(f"  {o.gpu.name}: {text}; price {o.money.price_label}")
    measured = sorted({o.gpu.name for o in result.options if o.efficiency.power_measured})
    out.append(
        "  energy: an estimate, not measured: TDP x power fraction x GPUs / predicted tok/s"
        + (f" (power fraction measured for {', '.join(measured)})" if measured else
           f" (power fraction {req.calibration.default.power_fraction:.2f}: upper bound)")
    )  # fmt: skip
    out.append(
        "  $/M tok: price per GPU-hour x GPUs / predicted tok/s; prices indicative and dated"
    )
    return out


def render_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False)


def plan_json(result: PlanResult) -> str:
    return render_json(plan_to_dict(result))


def render_calibration_text(cal: Calibration, fits: tuple[Fit, ...]) -> str:
    rows = [[f.path, f.gpu or "?", _num(f.memory, ".3f"), _num(f.compute, ".3f"),
             _num(f.power_fraction, ".3f"), "; ".join(f.notes)] for f in fits]  # fmt: skip
    lines = _table(["file", "GPU", "memory", "compute", "power", "notes"], rows)
    lines += ["", "fitted efficiency per GPU:"]
    for name, eff in cal.per_gpu:
        lines.append(
            f"  {name}: memory {eff.memory:.3f}, compute {eff.compute:.3f}, "
            f"power {eff.power_fraction:.3f} ({eff.source})"
        )
    if not cal.per_gpu:
        lines.append("  none: no file carried usable figures")
    return "\n".join(lines)


def audit_to_dict(verdicts: list[Verdict]) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "claims": [
            {
                "row": v.claim.row,
                "model": v.claim.model,
                "gpu": v.claim.gpu,
                "precision": v.claim.precision,
                "batch_size": v.claim.batch_size,
                "tp": v.claim.tp,
                "claimed_tokens_per_s": v.claim.tokens_per_s,
                "bound_tokens_per_s": float(f"{v.bound_tokens_per_s:.6g}"),
                "share_of_bound": float(f"{v.share_of_bound:.4g}"),
                "bound": v.bound,
                "verdict": v.verdict,
                "notes": list(v.notes),
            }
            for v in verdicts
        ],
    }


def render_audit_text(verdicts: list[Verdict]) -> str:
    rows = [[str(v.claim.row), v.claim.model, v.claim.gpu, v.claim.precision,
             str(v.claim.batch_size), str(v.claim.tp), _num(v.claim.tokens_per_s),
             _num(v.bound_tokens_per_s), f"{v.share_of_bound:.0%}", v.bound,
             v.verdict.upper() if v.verdict == "impossible" else v.verdict,
             "; ".join(v.notes)] for v in verdicts]  # fmt: skip
    headers = ["row", "model", "gpu", "precision", "batch", "TP", "claimed tok/s",
               "bound tok/s", "share", "bound", "verdict", "notes"]  # fmt: skip
    flagged = sum(v.verdict == "impossible" for v in verdicts)
    return "\n".join([*_table(headers, rows), "", f"{flagged} impossible claim(s)"])


def comparisons_to_dict(comparisons: list[Comparison]) -> dict[str, Any]:
    """``plan compare --json``: per file, each figure predicted, measured and their ratio."""
    return {
        "schema_version": 1,
        "runs": [
            {
                "path": c.path, "gpu": c.gpu, "kind": c.kind, "batch_size": c.batch_size,
                "input_len": c.input_len, "output_len": c.output_len,
                "precision": c.precision, "tp": c.tp, "efficiency": c.efficiency_source,
                "figures": {
                    name: {"predicted": float(f"{p:.6g}"), "measured": float(f"{m:.6g}"),
                           "ratio": float(f"{p / m:.4g}")}
                    for name, p, m in c.rows
                },
                "notes": list(c.notes),
            }
            for c in comparisons
        ],
    }  # fmt: skip


def render_comparisons_text(comparisons: list[Comparison]) -> str:
    rows = [[c.path, c.gpu or "?", c.kind, str(c.batch_size), f"{c.input_len}/{c.output_len}",
             c.precision, name, _num(p, ",.1f"), _num(m, ",.1f"), f"{p / m:.2f}"]
            for c in comparisons for name, p, m in c.rows]  # fmt: skip
    headers = ["file", "GPU", "kind", "batch", "in/out", "precision", "figure", "predicted",
               "measured", "ratio"]  # fmt: skip
    lines = _table(headers, rows)
    for c in comparisons:
        lines.append(f"  {c.path}: " + "; ".join(
            ([f"efficiency {c.efficiency_source}"] if c.efficiency_source else []) + list(c.notes)
        ))  # fmt: skip
    return "\n".join(lines)
