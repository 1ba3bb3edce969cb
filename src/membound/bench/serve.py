"""``membound bench serve``: an asyncio load generator for any OpenAI-compatible server.

Requests arrive as a Poisson process at ``--request-rate`` per second (``inf``: all at
once); ``--burstiness`` below 1 makes arrivals burstier (gamma-distributed gaps, vLLM's
option). ``--max-concurrency`` caps the requests in flight; arrivals beyond it wait.
Every request is counted: successes and failures (HTTP errors, refused connections, error
events, empty streams), each failure with its reason.

Metrics follow vLLM's ``benchmark_serving.py`` (definitions in ``openai_client.py``):
request/s and token/s over the whole duration; TTFT, TPOT, ITL and end-to-end latency
(mean, median, std, p90, p99) over successful requests.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from membound.bench.datasets import SampleRequest
from membound.bench.openai_client import (
    RequestResult,
    auth_headers,
    completion_payload,
    first_model_id,
    send_completion,
)
from membound.bench.stats import flat_summary


async def arrivals(
    requests: list[SampleRequest], rate: float, burstiness: float, seed: int
) -> AsyncIterator[SampleRequest]:
    """Yield requests at Poisson (gamma, with burstiness) intervals of mean 1/rate."""
    if burstiness <= 0:
        raise ValueError(f"--burstiness must be positive, got {burstiness}")
    rng = random.Random(seed)
    for i, req in enumerate(requests):
        yield req
        if rate == float("inf") or i == len(requests) - 1:
            continue
        await asyncio.sleep(rng.gammavariate(burstiness, 1.0 / (rate * burstiness)))


async def run_load(
    url: str, model: str, requests: list[SampleRequest], *, rate: float = float("inf"),
    max_concurrency: int | None = None, burstiness: float = 1.0, seed: int = 0,
    ignore_eos: bool = False, extra_body: dict[str, Any] | None = None, progress: bool = True,
    timeout_s: float = 6 * 3600, headers: dict[str, str] | None = None,
) -> tuple[list[RequestResult], float]:  # fmt: skip
    """Send every request; returns their results (in submission order) and the duration."""
    import aiohttp
    from tqdm import tqdm

    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    bar = tqdm(total=len(requests), desc="serve", unit="req", disable=not progress)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0), headers=headers
    ) as session:
        t0 = time.perf_counter()

        async def one(req: SampleRequest) -> RequestResult:
            payload = completion_payload(model, req.prompt, req.output_len,
                                         ignore_eos=ignore_eos, extra=extra_body)  # fmt: skip
            if limit is None:
                result = await send_completion(session, url, payload, req.prompt_len, t0)
            else:
                async with limit:
                    result = await send_completion(session, url, payload, req.prompt_len, t0)
            bar.update(1)
            return result

        tasks = []
        async for req in arrivals(requests, rate, burstiness, seed):
            tasks.append(asyncio.create_task(one(req)))
        results = list(await asyncio.gather(*tasks))
        duration = time.perf_counter() - t0
    bar.close()
    return results, duration


def timeline(
    results: list[RequestResult], duration: float, buckets: int = 20
) -> dict[str, list[float]]:
    """Mean requests in flight and output tokens/s in equal time slices of the run: the
    throughput-against-concurrency curve of one run."""
    width = max(duration / buckets, 1e-9)
    in_flight = [0.0] * buckets
    tokens = [0.0] * buckets
    for r in results:
        if r.success:
            for b in range(buckets):
                a, z = b * width, (b + 1) * width
                in_flight[b] += max(0.0, min(r.end_s, z) - max(r.start_s, a)) / width
        times = r.chunk_times()
        per_chunk = r.output_len / len(times) if times else 0.0
        for t in times:
            tokens[min(int(t / width), buckets - 1)] += per_chunk
    return {"t_s": [(b + 0.5) * width for b in range(buckets)], "in_flight": in_flight,
            "output_tokens_per_s": [n / width for n in tokens]}  # fmt: skip


def serve_figures(
    results: list[RequestResult], duration: float, num_gpus: int = 1
) -> dict[str, Any]:
    ok = [r for r in results if r.success]
    t = max(duration, 1e-12)
    n_in = sum(r.prompt_len for r in ok)
    n_out = sum(r.output_len for r in ok)
    figs: dict[str, Any] = {
        "num_requests": len(results),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration_s": duration,
        "total_input_tokens": n_in,
        "total_output_tokens": n_out,
        "requests_per_s": len(ok) / t,
        "output_tokens_per_s": n_out / t,
        "output_tokens_per_s_per_gpu": n_out / t / num_gpus,
        "total_tokens_per_s": (n_in + n_out) / t,
        "max_concurrent_requests": _max_in_flight(ok),
        "mean_in_flight": sum(r.latency_s for r in ok) / t,
    }
    ms = 1e3
    figs.update(flat_summary("ttft_ms", [r.ttft_s * ms for r in ok]))
    figs.update(flat_summary("tpot_ms", [r.tpot_s * ms for r in ok if r.tpot_s is not None]))
    figs.update(flat_summary("itl_ms", [g * ms for r in ok for g in r.itl_s]))
    figs.update(flat_summary("e2e_ms", [r.latency_s * ms for r in ok]))
    return figs


def _max_in_flight(ok: list[RequestResult]) -> int:
    events = sorted([(r.start_s, 1) for r in ok] + [(r.end_s, -1) for r in ok])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def error_counts(results: list[RequestResult]) -> dict[str, int]:
    return dict(Counter(r.error for r in results if not r.success).most_common(10))


def samples(results: list[RequestResult], duration: float) -> dict[str, Any]:
    ok = [r for r in results if r.success]
    return {
        "ttft_ms": [r.ttft_s * 1e3 for r in ok],
        "tpot_ms": [r.tpot_s * 1e3 for r in ok if r.tpot_s is not None],
        "itl_ms": [g * 1e3 for r in ok for g in r.itl_s],
        "e2e_ms": [r.latency_s * 1e3 for r in ok],
        "timeline": timeline(results, duration),
    }


def format_report(doc: dict[str, Any]) -> str:
    """vLLM's result block, plus energy and cost."""
    from membound.bench.results import fmt

    f = doc["figures"]
    rows = [("Successful requests", f["completed"]), ("Failed requests", f["failed"]),
            ("Benchmark duration (s)", fmt(f["duration_s"], 2)),
            ("Total input tokens", f["total_input_tokens"]),
            ("Total generated tokens", f["total_output_tokens"]),
            ("Request throughput (req/s)", fmt(f["requests_per_s"], 2)),
            ("Output token throughput (tok/s)", fmt(f["output_tokens_per_s"], 2)),
            ("Total token throughput (tok/s)", fmt(f["total_tokens_per_s"], 2)),
            ("Max concurrent requests", f["max_concurrent_requests"])]  # fmt: skip
    lines = ["{s:{c}^50}".format(s=" Serving Benchmark Result ", c="=")]
    lines += [f"{k + ':':<40}{v}" for k, v in rows]
    sections = (("ttft_ms", "Time to First Token"),
                ("tpot_ms", "Time per Output Token (excl. 1st token)"),
                ("itl_ms", "Inter-token Latency"), ("e2e_ms", "End-to-end Latency"))  # fmt: skip
    for key, title in sections:
        short = key.split("_")[0].upper().replace("E2E", "E2EL")
        lines.append("{s:{c}^50}".format(s=title, c="-"))
        for stat in ("mean", "median", "p90", "p99"):
            label = stat.capitalize() if stat in ("mean", "median") else stat.upper()
            lines.append(f"{f'{label} {short} (ms):':<40}{fmt(f[f'{key}_{stat}'], 2)}")
    lines.append("{s:{c}^50}".format(s="Energy and cost", c="-"))
    lines.append(f"{'Energy (J/output token):':<40}{fmt(f['energy_j_per_token'], 3)}")
    lines.append(f"{'$ / M output tokens:':<40}{fmt(f['cost_per_million_output_tokens'], 2)}")
    lines.append(f"energy: {doc['energy'].get('label', '-')}")
    lines.append(f"price: {doc['cost'].get('label', '-')}")
    for err, n in doc["figures"].get("errors", {}).items():
        lines.append(f"failed x{n}: {err}")
    lines.append("=" * 50)
    return "\n".join(lines)


def parse_rate(text: str) -> float:
    """``--request-rate``: a positive number or ``inf``."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive rate or 'inf'")
    return value


def energy_gpu_ids(text: str) -> tuple[int, ...] | None:
    """``--energy-gpus``: "all" -> None (every GPU NVML sees), "none" -> (), "0,1" -> (0, 1)."""
    if text.strip().lower() == "all":
        return None
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(int(i) for i in text.split(",") if i.strip())
    except ValueError as e:
        raise ValueError(
            f"--energy-gpus must be 'all', 'none' or indices like 0,1; got {text!r}"
        ) from e


def _tokenizer(args: argparse.Namespace) -> Any:
    import os

    path = args.tokenizer
    if path is None and args.model and os.path.isfile(os.path.join(args.model, "tokenizer.json")):
        path = args.model
    if path is None:
        return None
    from membound.engine.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(path)


def _requests(args: argparse.Namespace, tokenizer: Any) -> list[SampleRequest]:
    from membound.bench.datasets import load_dataset, random_requests

    if args.dataset:
        return load_dataset(args.dataset, args.num_prompts, tokenizer=tokenizer,
                            output_len=args.output_len)  # fmt: skip
    pool = None
    if tokenizer is not None:
        vocab = len(tokenizer)
    elif args.vocab_size is not None:
        vocab = args.vocab_size
    else:  # the server's own token ids, so every prompt is inside its vocabulary
        pool = asyncio.run(_token_pool(args))
        vocab = len(pool) + _LOW_IDS
    requests = random_requests(args.num_prompts, args.input_len, args.output_len or 128, vocab,
                               seed=args.seed, range_ratio=args.random_range_ratio,
                               tokenizer=tokenizer)  # fmt: skip
    if pool is None:
        return requests
    return [
        replace(r, prompt=[pool[i - _LOW_IDS] for i in r.prompt])  # type: ignore[union-attr]
        for r in requests
    ]


_LOW_IDS = 10  # random_requests avoids ids below 10 (special tokens in most vocabularies)


async def _token_pool(args: argparse.Namespace) -> list[int]:
    import aiohttp

    from membound.bench.openai_client import server_token_pool

    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=60), headers=auth_headers(args.api_key)
    ) as session:
        return await server_token_pool(session, args.base_url.rstrip("/"), args.seed)


def _device(args: argparse.Namespace) -> dict[str, Any]:
    from membound.bench.energy import nvml_device_names, nvml_driver_version
    from membound.bench.results import cpu_name, datasheet

    gpus = nvml_device_names()
    name = args.device_name or (gpus[0] if gpus else f"cpu: {cpu_name()}")
    return {
        "name": name,
        "type": "cuda" if gpus else "cpu",
        "count": args.num_gpus,
        "host_gpus": gpus,
        "driver": nvml_driver_version(),
        "datasheet": datasheet(name),
        "note": "the device is this host's (or --device-name); the server should run here",
    }


async def _run(
    args: argparse.Namespace, requests: list[SampleRequest]
) -> tuple[str, list[RequestResult], float]:
    import json

    import aiohttp

    base = args.base_url.rstrip("/")
    model = args.model
    if model is None:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30), headers=auth_headers(args.api_key)
        ) as session:
            model = await first_model_id(session, base)
        if model is None:
            raise ValueError(f"could not list models at {base}/v1/models; pass --model NAME")
    extra = json.loads(args.extra_body) if args.extra_body else None
    results, duration = await run_load(
        base + args.endpoint,
        model,
        requests,
        rate=args.request_rate,
        max_concurrency=args.max_concurrency,
        burstiness=args.burstiness,
        seed=args.seed,
        ignore_eos=args.ignore_eos,
        extra_body=extra,
        progress=not args.disable_tqdm,
        headers=auth_headers(args.api_key),
    )
    return model, results, duration


def _model_section(args: argparse.Namespace, served: str) -> dict[str, Any]:
    from membound.bench.results import read_model_config

    folder = args.tokenizer or args.model
    config = read_model_config(folder) if folder else None
    return {"name": args.model_label or served, "served_name": served, "config": config}


def _config(
    args: argparse.Namespace,
    model: str,
    requests: list[SampleRequest],
    results: list[RequestResult],
    figures: dict[str, Any],
) -> dict[str, Any]:
    """The run's configuration; ``batch_size`` is the mean number of requests in flight, which
    is what the planner compares TPOT against."""
    ok = [r for r in results if r.success] or results
    config = {
        "base_url": args.base_url, "endpoint": args.endpoint, "served_model": model,
        "request_rate": args.request_rate, "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency, "num_prompts": args.num_prompts,
        "dataset": args.dataset or "random", "ignore_eos": args.ignore_eos,
        "input_len": round(sum(r.prompt_len for r in ok) / len(ok)) if ok else 0,
        "output_len": round(sum(q.output_len for q in requests) / len(requests)),
        "batch_size": max(1, round(figures["mean_in_flight"])), "tp": args.num_gpus,
    }  # fmt: skip
    if args.precision:  # else left out: the planner then assumes bf16
        config["precision"] = args.precision
        config["kv_dtype"] = args.kv_dtype or args.precision
    return config


def main(args: argparse.Namespace) -> int:
    """Run ``bench serve`` from parsed arguments; prints, writes JSON and plot."""
    import importlib.util

    from membound.bench.cost import cost_figures, resolve_price
    from membound.bench.energy import EnergyMeter
    from membound.bench.results import build_result

    if importlib.util.find_spec("aiohttp") is None:
        raise ValueError("bench serve needs aiohttp: pip install aiohttp (or 'membound[bench]')")
    requests = _requests(args, _tokenizer(args))
    meter = EnergyMeter(energy_gpu_ids(args.energy_gpus)).start()
    model, results, duration = asyncio.run(_run(args, requests))
    energy = meter.stop()
    device = _device(args)
    figures = serve_figures(results, duration, args.num_gpus)
    figures.update(energy.figures(figures["total_output_tokens"]))
    price = resolve_price(args.price_per_gpu_hour, device["name"])
    figures.update(cost_figures(price, args.num_gpus, figures["output_tokens_per_s"]))
    figures["errors"] = error_counts(results)
    config = _config(args, model, requests, results, figures)
    notes = ["config.batch_size is the mean number of requests in flight"]
    if not args.precision:
        notes.append("the server's precision was not given (--precision): not recorded")
    unknown = sum(1 for r in results if r.success and r.prompt_len == 0)
    if unknown:
        notes.append(
            f"prompt length unknown for {unknown} request(s) (no usage from the server, "
            "no --tokenizer): counted as 0 input tokens"
        )
    if figures["failed"]:
        notes.append(f"{figures['failed']} of {len(results)} requests failed; see figures.errors")
    doc = build_result(
        "serve",
        device=device,
        model=_model_section(args, model),
        config=config,
        figures=figures,
        energy=energy.to_dict(),
        cost={"label": price.label},
        samples=samples(results, duration),
        notes=notes,
    )
    print(format_report(doc))
    from membound.bench.cli import finish

    return finish(doc, args)
