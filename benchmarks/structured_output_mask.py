"""CPU benchmark: the per-step cost of structured outputs (xgrammar token masks).

For a batch of B requests constrained by one JSON schema, one decode step costs, on top of
unconstrained sampling:

  fill   StructuredOutputManager.bitmasks(): xgrammar fills each row's allowed-token bitmask
         (CPU, per row; the matcher sits inside a JSON string, the widest mask, and at a
         structural point, the narrowest)
  mask   build_sampling_metadata() unpacking the bitmasks into a [B, vocab] bool mask, plus
         the sampler's masked_fill (measured as sampler+metadata time with masks minus
         without)

Vocabularies: the bundled default model's tokenizer (8,192 ids) and, with --tokenizer, a
real one (e.g. SmolLM2's 49,152). Medians of --repeats timed runs.

    python benchmarks/structured_output_mask.py --tokenizer /path/to/hf-folder \
        --output-json benchmarks/results/structured_output_mask.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from cpu_engine_vs_transformers import _git_commit

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "tags"],
}
# prefixes that leave the matcher inside a string value (wide mask) or before a key (narrow)
STATES = {"in_string": '{"name": "Al', "structural": '{"name": "Al", '}


def _times_ms(fn: Any, repeats: int) -> tuple[float, float]:
    """(median, min) of ``repeats`` timed calls, in ms (the min resists a busy machine)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), min(times)


def measure(folder: Path, batch_sizes: list[int], repeats: int) -> dict[str, Any]:
    from membound.engine.tokenizer import Tokenizer
    from membound.layers.sampler import Sampler, build_sampling_metadata
    from membound.layers.sampling_metadata import unpack_bitmask
    from membound.sampling_params import SamplingParams, StructuredOutputsParams
    from membound.structured_output.grammar import GrammarCompiler
    from membound.structured_output.manager import StructuredOutputManager

    tok = Tokenizer.from_pretrained(folder)
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    compiler = GrammarCompiler(tok.to_json(), vocab, tok.eos_token_ids)
    spec = StructuredOutputsParams(json=SCHEMA)
    t0 = time.perf_counter()
    compiler.compile(spec)
    compile_ms = (time.perf_counter() - t0) * 1000
    sampler = Sampler()
    cpu = torch.device("cpu")
    rows: list[dict[str, Any]] = []
    for state, prefix in STATES.items():
        prefix_ids = tok.encode(prefix, add_special_tokens=False)
        for b in batch_sizes:
            manager = StructuredOutputManager(compiler)
            ids = [f"r{i}" for i in range(b)]
            for rid in ids:
                manager.add(rid, spec)
                manager.accept(rid, prefix_ids)
            assert all(rid in manager for rid in ids), "the prefix must be grammatical"
            params = [SamplingParams(temperature=1.0)] * b
            logits = torch.randn(b, vocab)
            empty: list[list[int]] = [[] for _ in range(b)]

            def step(
                masks: list[torch.Tensor | None] | None,
                params: list[Any] = params,
                empty: list[list[int]] = empty,
                logits: torch.Tensor = logits,
            ) -> None:
                n = len(params)
                md = build_sampling_metadata(
                    params, empty, empty, [None] * n, [()] * n, vocab, cpu, None, masks
                )
                sampler(logits, md)

            masks = manager.bitmasks(ids)
            per_row = [masks[r] for r in ids]
            allowed = int(unpack_bitmask(per_row[0][None], vocab).sum())
            fill, fill_min = _times_ms(lambda m=manager, i=ids: m.bitmasks(i), repeats)
            plain, plain_min = _times_ms(lambda: step(None), repeats)
            masked, masked_min = _times_ms(lambda p=per_row: step(p), repeats)
            rows.append(
                {
                    "state": state,
                    "batch": b,
                    "allowed_tokens_row0": allowed,
                    "fill_ms_median": fill,
                    "fill_ms_min": fill_min,
                    "sample_ms_unconstrained_median": plain,
                    "sample_ms_unconstrained_min": plain_min,
                    "sample_ms_masked_median": masked,
                    "sample_ms_masked_min": masked_min,
                    "overhead_ms_min": fill_min + masked_min - plain_min,
                }
            )
            print(
                f"{folder.name:>16} vocab={vocab:6d} {state:>10} B={b:3d} allowed={allowed:6d}"
                f"  fill {fill_min:7.3f} ms  sample {plain_min:7.3f} -> {masked_min:7.3f} ms"
                f"  (min of {repeats}; medians {fill:.3f} / {plain:.3f} -> {masked:.3f})",
                flush=True,
            )
    return {"tokenizer": str(folder), "vocab_size": vocab, "compile_ms": compile_ms, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tokenizer",
        type=Path,
        action="append",
        default=[],
        help="an HF model folder (tokenizer.json + config.json); repeatable",
    )
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--output-json", type=Path, default=None)
    args = ap.parse_args()
    from membound.entrypoints.sysinfo import collect_info

    default = Path(__file__).resolve().parents[1] / "src/membound/assets/default_model"
    folders = [default, *args.tokenizer]
    result = {
        "benchmark": "structured_output_mask",
        "commit": _git_commit(),
        "machine": collect_info(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
        "xgrammar": _xgrammar_version(),
        "schema": SCHEMA,
        "states": STATES,
        "config": {"batch_sizes": args.batch_sizes, "repeats": args.repeats},
        "results": [measure(f, args.batch_sizes, args.repeats) for f in folders],
    }
    if args.output_json:
        args.output_json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.output_json}")


def _xgrammar_version() -> str:
    from importlib.metadata import version

    return version("xgrammar")


if __name__ == "__main__":
    main()
