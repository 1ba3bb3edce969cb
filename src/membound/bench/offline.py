"""What ``bench throughput`` and ``bench latency`` share: the engine, its model's byte and
FLOP counts, and the result sections describing model, device and configuration."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from membound.bench.results import device_info, precision_name, read_model_config


@dataclass(frozen=True)
class ModelBytes:
    """Byte and parameter counts of the loaded model, for roofline figures."""

    num_params: int
    weight_bytes: int  # every parameter once (a tied lm_head shares the embedding)
    weight_bytes_read_per_step: int  # all but the embedding table (only a few rows are read)
    linear_params_per_token: int  # matrices every token goes through (lm_head excluded)
    lm_head_params: int  # vocab x hidden, applied once per sampled row


def model_bytes(engine: Any) -> ModelBytes:
    """Count the engine's parameters by role (embedding, lm_head, the rest)."""
    tied = engine.config.model_config.tie_word_embeddings
    seen: set[int] = set()
    total = total_bytes = embed_bytes = linear = lm_head = 0
    model = engine.executor.driver.model  # rank 0's shard
    for name, param in model.named_parameters(remove_duplicate=False):
        is_embed = "embed_tokens" in name
        if (name.startswith("lm_head") or (tied and is_embed)) and param.dim() >= 2:
            lm_head = param.numel()  # the table, not an int8 table's per-row scales
        elif param.dim() >= 2 and not is_embed:
            linear += param.numel()
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        total_bytes += param.numel() * param.element_size()
        if is_embed and not tied:
            embed_bytes += param.numel() * param.element_size()
    return ModelBytes(total, total_bytes, total_bytes - embed_bytes, linear, lm_head)


def create_engine(args: argparse.Namespace) -> Any:
    from membound.engine.engine_args import EngineArgs
    from membound.engine.llm_engine import LLMEngine

    engine_args = EngineArgs.from_cli_args(args)
    return LLMEngine.from_engine_args(engine_args, progress=not args.disable_tqdm)


def engine_precision(engine: Any) -> tuple[str, str]:
    """(weight precision, KV dtype) in the planner's names."""
    cfg = engine.config
    dtype = precision_name(cfg.dtype)
    quant = getattr(cfg, "quantization", None) or getattr(cfg.model_config, "quantization", None)
    kv = getattr(cfg.cache_config, "cache_dtype", None) or getattr(
        cfg.cache_config, "kv_cache_dtype", None
    )
    kv = dtype if kv in (None, "auto") else precision_name(str(kv))
    return (str(quant) if quant else dtype), kv


def model_section(engine: Any, counts: ModelBytes, requested: str | None) -> dict[str, Any]:
    path = engine.config.model
    return {
        "name": requested
        if requested and not os.path.isdir(requested)
        else os.path.basename(os.path.normpath(path)),
        "path": path,
        "config": read_model_config(path),
        "architecture": engine.config.model_config.architecture,
        "num_params": counts.num_params,
        "weight_bytes": counts.weight_bytes,
    }


def engine_config_section(engine: Any, args: argparse.Namespace) -> dict[str, Any]:
    cfg = engine.config
    precision, kv_dtype = engine_precision(engine)
    return {
        "precision": precision,
        "kv_dtype": kv_dtype,
        "dtype": cfg.dtype,
        "tp": cfg.parallel_config.tensor_parallel_size,
        "device": cfg.device,
        "load_format": cfg.load_format,
        "max_model_len": cfg.scheduler_config.max_model_len,
        "max_num_seqs": cfg.scheduler_config.max_num_seqs,
        "max_num_batched_tokens": cfg.scheduler_config.max_num_batched_tokens,
        "block_size": engine.info.block_size,
        "num_kv_blocks": engine.info.num_blocks,
        "kv_cache_bytes": engine.info.kv_bytes,
        "enable_chunked_prefill": getattr(args, "enable_chunked_prefill", None),
        "enable_prefix_caching": getattr(args, "enable_prefix_caching", None),
        "seed": cfg.seed,
    }


def engine_device(engine: Any) -> dict[str, Any]:
    return device_info(engine.config.device)


def prefix_cache_hit_rate(before: Any, after: Any) -> float | None:
    """Share of prompt tokens found in the prefix cache between two stats snapshots."""
    queries = after.prefix_cache_queries_total - before.prefix_cache_queries_total
    hits = after.prefix_cache_hits_total - before.prefix_cache_hits_total
    return hits / queries if queries else None


def synchronizer(device: str) -> Any:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


@contextlib.contextmanager
def progress_bar(total: int, desc: str, disable: bool) -> Iterator[Any]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, disable=disable, unit="req", dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Options every bench subcommand shares."""
    p.add_argument(
        "--output-json",
        metavar="FILE",
        default=None,
        help="write the result (machine, versions, commit, config, figures) here",
    )
    p.add_argument(
        "--plot", metavar="FILE.png", default=None, help="draw the run's charts (needs matplotlib)"
    )
    p.add_argument(
        "--price-per-gpu-hour",
        type=float,
        default=None,
        help="dollars per GPU-hour (default: the planner table's dated price for "
        "the device, none on CPU)",
    )
    p.add_argument("--disable-tqdm", action="store_true", help="no progress bars")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    from membound.engine.engine_args import EngineArgs

    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="checkpoint folder or hub id (default: the bundled model)",
    )
    EngineArgs.add_cli_args(p)
