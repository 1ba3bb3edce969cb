"""GGUF memory: the weight bytes the engine holds for a GGUF file against the file's tensor bytes.

Loads the file through ``LLM`` (the engine's own start-up: its memory report is
``LLMEngine.info.weights_bytes``, the "weights ... GiB" of the start-up log) at each dtype,
quantized in memory (the default) and dense (``load_format="gguf_dequantized"``), and
breaks the held bytes down by role (int4 linears, int8 linears, the token table shared with
a tied head, the rest) beside the file's bytes per ggml type. Every figure is computed.

    OMP_NUM_THREADS=1 python benchmarks/gguf_memory.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
        --output-json benchmarks/results/gguf/smollm2_q4_1_memory.json \
        --output-log benchmarks/results/gguf/smollm2_q4_1_memory.log
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

TARGET_RATIO = 1.3  # the bound: whole-model weights within 1.3x of the GGUF bytes


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


def held_by_role(model: torch.nn.Module) -> dict[str, int]:
    """Parameter bytes (each parameter once) by role."""
    roles: Counter[str] = Counter()
    methods = {
        name: getattr(getattr(m, "quant_method", None), "name", None)
        for name, m in model.named_modules()
    }
    for name, p in model.named_parameters():
        module = name.rsplit(".", 1)[0]
        method = methods.get(module)
        if "embed_tokens" in name or name.startswith("lm_head"):
            role = "token table + lm_head"
        elif method == "gguf":
            role = "int4 linears"
        elif method == "gguf_int8":
            role = "int8 linears"
        elif method is not None:
            role = "dense linears"
        else:
            role = "norms and the rest"
        roles[role] += p.numel() * p.element_size()
    return dict(roles)


def measure(path: str, dtype: str, load_format: str) -> dict[str, Any]:
    from membound import LLM

    handler = _Lines()
    loggers = [logging.getLogger(n) for n in ("membound.gguf.loader", "membound.engine")]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        llm = LLM(path, dtype=dtype, load_format=load_format, max_model_len=256,
                  num_kv_blocks=16)  # fmt: skip
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    info = llm.llm_engine.info
    model = llm.llm_engine.executor.driver.model
    roles = held_by_role(model)
    assert sum(roles.values()) == info.weights_bytes, (roles, info.weights_bytes)
    return {
        "dtype": info.dtype,
        "load_format": load_format,
        "kernel_backend": info.kernel_backend,
        "weights_bytes": info.weights_bytes,
        "held_by_role": roles,
        "lm_head_packed_copy": model.lm_head.packed_weight is not None,
        "startup_log": [line for line in handler.lines if "GGUF" in line or "ready" in line],
    }


def main() -> int:
    from membound.bench.provenance import source_commit
    from membound.gguf.reader import GGUFFile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", required=True, help="the .gguf file")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--output-json", required=True)
    ap.add_argument("--output-log", required=True)
    args = ap.parse_args()

    file = GGUFFile(args.gguf)
    by_type: Counter[str] = Counter()
    for t in file.tensors.values():
        by_type[t.ggml_type] += t.n_bytes
    gguf_bytes = file.tensor_bytes()
    rows = []
    for dtype in args.dtypes.split(","):
        for load_format in ("auto", "gguf_dequantized"):
            row = measure(args.gguf, dtype, load_format)
            row["ratio_to_gguf_bytes"] = row["weights_bytes"] / gguf_bytes
            rows.append(row)
    commit, dirty = source_commit()
    result = {
        "benchmark": "gguf_memory",
        "gguf": Path(args.gguf).name,
        "gguf_tensor_bytes": gguf_bytes,
        "gguf_bytes_by_type": dict(by_type),
        "target_ratio": TARGET_RATIO,
        "rows": rows,
        "commit": commit,
        "dirty": dirty,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    lines = [
        f"# {Path(args.gguf).name}: {gguf_bytes} GGUF tensor bytes "
        f"({', '.join(f'{t} {n}' for t, n in sorted(by_type.items()))})",
        f"# commit {commit}{' (dirty)' if dirty else ''}; torch {torch.__version__}; "
        f"{platform.machine()} CPU (shared machine)",
        f"# command: {result['command']}",
    ]
    for r in rows:
        ok = "within" if r["ratio_to_gguf_bytes"] <= TARGET_RATIO else "OVER"
        lines.append(
            f"{r['dtype']:>9} {r['load_format']:>16} ({r['kernel_backend']} backend): weights "
            f"{r['weights_bytes']} bytes = {r['weights_bytes'] / 2**30:.3f} GiB = "
            f"{r['ratio_to_gguf_bytes']:.3f}x the GGUF bytes ({ok} {TARGET_RATIO}x); "
            f"second packed head copy: {r['lm_head_packed_copy']}"
        )
        lines += [f"    {role}: {n} bytes" for role, n in sorted(r["held_by_role"].items())]
        lines += [f"    log| {line}" for line in r["startup_log"]]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    Path(args.output_log).write_text(text, encoding="utf-8")
    quantized = [r for r in rows if r["load_format"] == "auto"]
    return 0 if all(r["ratio_to_gguf_bytes"] <= TARGET_RATIO for r in quantized) else 1


if __name__ == "__main__":
    sys.exit(main())
