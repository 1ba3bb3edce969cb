"""Check claimed throughput figures against the physical bounds.

``membound plan audit CLAIMS.csv`` reads one claim per row:

    model,gpu,precision,batch_size,tokens_per_s[,tp,input_len,output_len,kv_dtype]

``tokens_per_s`` is aggregate output tokens per second over the whole batch. Each claim
is compared with the roofline bound on decode: ``batch / ideal decode step``, where the
step reads every weight once plus each sequence's KV at ``input_len`` keys (0 when not
given) at the datasheet bandwidth, computes at the dense peak, and pays no latency.
Missing columns take the most generous value (no KV, fp8 KV), so a flagged claim is
impossible whatever the unstated details.

    impossible  claim > bound (+1 % for rounding)
    doubtful    claim > 90 % of the bound: beyond any measured share of a ceiling
    plausible   otherwise
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

from membound.planner.errors import PlannerError
from membound.planner.hardware import HardwareTable
from membound.planner.memory import check_tp, plan_memory
from membound.planner.model_cost import model_cost
from membound.planner.presets import load_model
from membound.planner.roofline import Efficiency, decode_step
from membound.planner.workload import EngineLimits, Workload

REQUIRED_COLUMNS = ("model", "gpu", "precision", "batch_size", "tokens_per_s")
TOLERANCE = 1.01
DOUBTFUL_SHARE = 0.9


@dataclass(frozen=True)
class Claim:
    row: int
    model: str
    gpu: str
    precision: str
    batch_size: int
    tokens_per_s: float
    tp: int = 1
    input_len: int = 0
    output_len: int = 0
    kv_dtype: str = "fp8"


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    bound_tokens_per_s: float
    bound: str  # "memory" or "compute"
    verdict: str  # "impossible" | "doubtful" | "plausible"
    share_of_bound: float
    notes: tuple[str, ...] = ()


def _int(row: dict[str, str], key: str, default: int, line: int) -> int:
    text = (row.get(key) or "").strip()
    if not text:
        return default
    try:
        return int(float(text))
    except ValueError as e:
        raise PlannerError(f"claims row {line}: {key}={text!r} is not a number") from e


def read_claims(path: str | os.PathLike[str]) -> list[Claim]:
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise PlannerError(f"claims file {path!r} could not be read: {e}") from e
    if not rows:
        raise PlannerError(f"claims file {path!r} has no rows")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
    if missing:
        raise PlannerError(
            f"claims file {path!r} lacks column(s) {', '.join(missing)}; "
            f"needs {', '.join(REQUIRED_COLUMNS)}"
        )
    claims = []
    for line, row in enumerate(rows, start=2):
        try:
            tokens = float(row["tokens_per_s"])
        except ValueError as e:
            raise PlannerError(f"claims row {line}: tokens_per_s is not a number") from e
        claims.append(
            Claim(
                row=line,
                model=row["model"].strip(),
                gpu=row["gpu"].strip(),
                precision=row["precision"].strip(),
                batch_size=_int(row, "batch_size", 1, line),
                tokens_per_s=tokens,
                tp=_int(row, "tp", 1, line),
                input_len=_int(row, "input_len", 0, line),
                output_len=_int(row, "output_len", 0, line),
                kv_dtype=(row.get("kv_dtype") or "").strip() or "fp8",
            )
        )
    return claims


def audit_claim(claim: Claim, table: HardwareTable) -> Verdict:
    """Compare one claim with its roofline bound."""
    shape = load_model(claim.model)
    gpu = table.get(claim.gpu)
    check_tp(shape, gpu, claim.tp)
    if claim.batch_size < 1:
        raise PlannerError(f"claims row {claim.row}: batch_size must be at least 1")
    cost = model_cost(shape, claim.precision, claim.kv_dtype, claim.tp)
    step = decode_step(cost, gpu, claim.batch_size, claim.input_len, Efficiency.ideal())
    bound = claim.batch_size / step.total_s
    share = claim.tokens_per_s / bound
    if share > TOLERANCE:
        verdict = "impossible"
    elif share > DOUBTFUL_SHARE:
        verdict = "doubtful"
    else:
        verdict = "plausible"
    notes = []
    context = max(claim.input_len + claim.output_len, 1)
    workload = Workload(input_len=context, output_len=1, concurrency=claim.batch_size)
    mem = plan_memory(cost, gpu, workload, EngineLimits(gpu_memory_utilization=1.0))
    if not mem.fits:
        notes.append(f"does not fit: {mem.reason}")
    elif mem.max_concurrent_seqs < claim.batch_size:
        notes.append(f"KV cache holds only {mem.max_concurrent_seqs} sequences of {context} tokens")
    return Verdict(claim, bound, step.bound, verdict, share, tuple(notes))


def audit(claims: list[Claim], table: HardwareTable) -> list[Verdict]:
    """Verdicts for every claim; a bad row is an error naming its line."""
    verdicts = []
    for claim in claims:
        try:
            verdicts.append(audit_claim(claim, table))
        except PlannerError as e:
            raise PlannerError(f"claims row {claim.row}: {e}") from e
    return verdicts
