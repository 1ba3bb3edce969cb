"""Phase e2e: an 8B-shaped model (Llama-3-8B config, random weights) end to end.

1. Baseline on the same GPU: transformers ``generate`` in bf16, batch-1 ms/token (decode
   only: the 1-token run's time is subtracted) and batch-32 output tok/s (128 in / 128 out).
2. membound BF16: batch-1 ms/token over timed decode steps (and the weight bandwidth that
   implies: bytes a step reads, common.weight_bytes_read_per_step, vs the copy bandwidth),
   then offline throughput, 128 in / 128 out, all prompts submitted at once.
3. membound FP8 weights and FP8 KV cache (``quantization="fp8"``, ``kv_cache_dtype="fp8"``,
   what TensorRT-LLM's FP8 figures use): the same two figures.
4. membound INT4 weights (``quantization="int4"``): batch-1 ms/token.

Three engines in all, each dropped and collected before the next is built. The anchors
(TensorRT-LLM 15,572 tok/s BF16 128/128 on an H100; 6.0-7.5 ms/token batch 1; see
docs/performance.md) use the same shapes. Dry run: a tiny Llama on the CPU, fp32.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "kernels"))
from common import weight_bytes_read_per_step  # noqa: E402
from gpu_phases import GB, PhaseResult, Target, phase_args, write_model_folder  # noqa: E402

IN_LEN = 128


def sizes(t: Target) -> dict[str, int]:
    return t.pick({"decode_steps": 64, "hf_batch": 32, "hf_new": 128, "prompts": 512,
                   "out_len": 128, "max_num_seqs": 256},
                  {"decode_steps": 6, "hf_batch": 4, "hf_new": 6, "prompts": 4, "out_len": 6,
                   "max_num_seqs": 4})  # fmt: skip


def prompts(n: int, vocab: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, IN_LEN), generator=gen)


def transformers_baseline(t: Target, cfg: dict[str, Any], s: dict[str, int]) -> dict[str, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures",)})
    old = torch.get_default_dtype()
    torch.set_default_dtype(t.dtype)
    try:
        with torch.device(t.device):
            model = LlamaForCausalLM(hf_cfg).eval()
    finally:
        torch.set_default_dtype(old)

    def generate(ids: torch.Tensor, new: int, model: Any = model) -> float:
        t.sync()
        t0 = time.perf_counter()
        model.generate(ids.to(t.device), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, pad_token_id=0)  # fmt: skip
        t.sync()
        return time.perf_counter() - t0

    one = prompts(1, cfg["vocab_size"])
    n = s["decode_steps"]
    with torch.inference_mode():
        generate(one, 2)  # warm-up
        ms_token = (generate(one, n + 1) - generate(one, 1)) / n * 1e3
        batch = prompts(s["hf_batch"], cfg["vocab_size"], seed=1)
        generate(batch, 2)
        elapsed = generate(batch, s["hf_new"])
    del model
    return {"batch1_ms_per_token": ms_token,
            "batch_size": s["hf_batch"], "output_tokens_per_s": s["hf_batch"] * s["hf_new"] / elapsed}  # fmt: skip


def make_engine(
    t: Target, folder: Path, quantization: str | None, kv_dtype: str, s: dict[str, int]
) -> Any:
    from membound.engine.engine_args import EngineArgs
    from membound.engine.llm_engine import LLMEngine

    return LLMEngine.from_engine_args(EngineArgs(
        model=str(folder), load_format="dummy", dtype=str(t.dtype).removeprefix("torch."),
        device=t.device.type, quantization=quantization, kv_cache_dtype=kv_dtype,
        skip_tokenizer_init=True,
        max_model_len=IN_LEN + max(s["out_len"], s["decode_steps"] + 8) + 16,
        max_num_seqs=s["max_num_seqs"], gpu_memory_utilization=0.85,
        enable_prefix_caching=False))  # fmt: skip


def batch1_latency(t: Target, engine: Any, s: dict[str, int], copy: float | None) -> dict:
    from membound.sampling_params import SamplingParams

    steps, warm = s["decode_steps"], 4
    params = SamplingParams(temperature=0, max_tokens=steps + warm + 1, ignore_eos=True)
    engine.add_request("latency", prompts(1, engine.config.model_config.vocab_size)[0].tolist(),
                       params)  # fmt: skip
    for _ in range(warm + 1):  # prefill, warm-up (and graph capture)
        engine.step()
    times = []
    while engine.has_unfinished_requests():
        t.sync()
        t0 = time.perf_counter()
        engine.step()
        t.sync()
        times.append(time.perf_counter() - t0)
    ms = sorted(times)[len(times) // 2] * 1e3
    read = weight_bytes_read_per_step(engine, batch=1)
    gbs = read / (ms / 1e3) / GB
    return {"ms_per_token_median": ms, "ms_per_token_mean": sum(times) / len(times) * 1e3,
            "weight_bytes_read_per_step": read, "achieved_weight_gbs": gbs,
            "fraction_of_copy": gbs / copy if copy else None}  # fmt: skip


def throughput(t: Target, engine: Any, s: dict[str, int]) -> dict:
    from membound.sampling_params import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=s["out_len"], ignore_eos=True)
    ids = prompts(s["prompts"], engine.config.model_config.vocab_size, seed=2)
    t.sync()
    t0 = time.perf_counter()
    for i, row in enumerate(ids.tolist()):
        engine.add_request(f"thr-{i}", row, params)
    while engine.has_unfinished_requests():
        engine.step()
    t.sync()
    elapsed = time.perf_counter() - t0
    out = s["prompts"] * s["out_len"]
    return {"prompts": s["prompts"], "input_len": IN_LEN, "output_len": s["out_len"],
            "elapsed_s": elapsed, "output_tokens_per_s": out / elapsed,
            "total_tokens_per_s": (out + s["prompts"] * IN_LEN) / elapsed}  # fmt: skip


def run_precision(t: Target, res: PhaseResult, folder: Path, name: str, quant: str | None,
                  kv_dtype: str, s: dict[str, int], copy: float | None,
                  with_throughput: bool) -> None:  # fmt: skip
    t0 = time.perf_counter()
    engine = make_engine(t, folder, quant, kv_dtype, s)
    res.record(f"{name}/build_s", time.perf_counter() - t0, f"{name}: engine built in "
               f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    cc = engine.config.cache_config
    res.record(f"{name}/config", {"quantization": quant, "kv_cache_dtype": cc.kv_cache_dtype,
                                  "weight_bytes": engine.info.weights_bytes})  # fmt: skip
    try:
        with torch.inference_mode():
            lat = batch1_latency(t, engine, s, copy)
            res.record(f"{name}/batch1", lat, f"{name}: batch 1 {lat['ms_per_token_median']:.2f}"
                       f" ms/token, {lat['achieved_weight_gbs']:.0f} GB/s of weights read")  # fmt: skip
            if with_throughput:
                thr = throughput(t, engine, s)
                res.record(f"{name}/throughput", thr, f"{name}: {IN_LEN}/{s['out_len']} x "
                           f"{s['prompts']}: {thr['output_tokens_per_s']:,.0f} output tok/s")  # fmt: skip
    finally:
        del engine
        t.free()


def main() -> int:
    _, t, res = phase_args("e2e", __doc__)
    run(t, res)
    return res.exit_code()


def run(t: Target, res: PhaseResult) -> None:
    """Every measurement of the phase, each recorded in ``res`` as it completes."""
    from gpu_phases import copy_bandwidth_gbs

    s, cfg = sizes(t), t.model_config()
    res.record("sizes", s)
    res.record("model_dtype", str(t.dtype), f"model dtype {t.dtype} (the 'bf16' runs use it)")
    copy = res.attempt("copy bandwidth", lambda: copy_bandwidth_gbs(t))
    res.record("copy_bandwidth_gbs", copy)
    hf = res.attempt("transformers", lambda: transformers_baseline(t, cfg, s))
    t.free()
    if hf is not None:
        res.record("transformers", hf, f"transformers: batch 1 {hf['batch1_ms_per_token']:.2f} "
                   f"ms/token; batch {hf['batch_size']}: {hf['output_tokens_per_s']:,.0f} tok/s")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="membound-e2e-") as tmp:
        folder = write_model_folder(Path(tmp) / "llama-3-8b-shaped", cfg)
        for name, quant, kv, thr in (("bf16", None, "auto", True), ("fp8", "fp8", "fp8", True),
                                     ("int4", "int4", "auto", False)):  # fmt: skip
            res.attempt(name, lambda name=name, quant=quant, kv=kv, thr=thr: run_precision(
                t, res, folder, name, quant, kv, s, copy, thr))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
