"""``membound bench report results/*.json``: a comparison table and charts across runs."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from membound.bench.results import fmt, read_json

COLUMNS: tuple[tuple[str, str], ...] = (
    ("file", "file"),
    ("kind", "kind"),
    ("device", "device"),
    ("model", "model"),
    ("precision", "prec"),
    ("batch", "batch/conc"),
    ("lengths", "in/out"),
    ("output_tokens_per_s", "out tok/s"),
    ("requests_per_s", "req/s"),
    ("ttft_ms_mean", "TTFT ms"),
    ("tpot_ms_mean", "TPOT ms"),
    ("tpot_ms_p99", "TPOT p99"),
    ("bandwidth", "GB/s (% sheet)"),
    ("energy_j_per_token", "J/tok"),
    ("cost_per_million_output_tokens", "$/M tok"),
    ("commit", "commit"),
)


def _short_device(name: str) -> str:
    return name.replace("NVIDIA ", "")[:28]


def row(path: str, doc: dict[str, Any]) -> dict[str, Any]:
    """The comparison figures of one result document."""
    f, c = doc.get("figures", {}), doc.get("config", {})
    batch = c.get("max_concurrency") if doc.get("kind") == "serve" else c.get("batch_size")
    if doc.get("kind") == "serve" and batch is None:
        batch = f"rate {c.get('request_rate')}"
    gbs, frac = f.get("achieved_weight_bandwidth_gbs"), f.get("bandwidth_fraction_of_datasheet")
    bandwidth = None
    if isinstance(gbs, (int, float)):
        bandwidth = fmt(gbs) + (f" ({frac * 100:.0f} %)" if isinstance(frac, (int, float)) else "")
    return {
        "file": os.path.basename(path),
        "kind": doc.get("kind"),
        "device": _short_device(str(doc.get("device", {}).get("name", "?"))),
        "model": doc.get("model", {}).get("name"),
        "precision": c.get("precision"),
        "batch": batch,
        "lengths": f"{c.get('input_len')}/{c.get('output_len')}",
        "output_tokens_per_s": f.get("output_tokens_per_s"),
        "requests_per_s": f.get("requests_per_s"),
        "ttft_ms_mean": f.get("ttft_ms_mean"),
        "tpot_ms_mean": f.get("tpot_ms_mean"),
        "tpot_ms_p99": f.get("tpot_ms_p99"),
        "bandwidth": bandwidth,
        "energy_j_per_token": f.get("energy_j_per_token"),
        "cost_per_million_output_tokens": f.get("cost_per_million_output_tokens"),
        "commit": (doc.get("commit") or "-")[:8] + ("+" if doc.get("commit_dirty") else ""),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    def cell(key: str, value: Any) -> str:
        if key == "energy_j_per_token" and isinstance(value, (int, float)):
            return f"{value:.3g}"
        if value == "not measured":
            return "n/m"
        return fmt(value, 2)

    cells = [[cell(k, r[k]) for k, _ in COLUMNS] for r in rows]
    headers = [h for _, h in COLUMNS]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(headers)]  # fmt: skip
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for c in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))
    if any(r["energy_j_per_token"] == "not measured" for r in rows):
        lines.append("n/m: energy not measured (no NVML energy counter on that machine)")
    return "\n".join(lines)


def load_results(paths: list[str]) -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in paths:
        try:
            docs.append((path, read_json(path)))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"result file {path!r} does not exist") from e
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
    return docs


def main(args: argparse.Namespace) -> int:
    docs = load_results(args.files)
    rows = [row(p, d) for p, d in docs]
    print(format_table(rows))
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as f:
            json.dump({"schema_version": 1, "rows": rows}, f, indent=2)
            f.write("\n")
    if args.plot:
        from membound.bench.plots import plot_report

        plot_report(docs, args.plot)
        print(f"plot written to {args.plot}")
    return 0
