"""The servers of ``cpu_peers_serve.py``: how each one is started (command, environment,
per-request fields), its readiness, freezing, and the memory of its process tree. See
``cpu_peers_serve.py``'s docstring for why each server is set up as it is."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    extra_body: dict[str, Any] = field(default_factory=dict)
    ignore_eos: bool = True
    notes: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    peak_rss_mib: float = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                                         start_new_session=True)  # fmt: skip

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout_s: float) -> float:
        """Poll ``/v1/models`` until it answers 200; the seconds it took. A server that exits
        or does not answer within ``timeout_s`` raises with the tail of its log."""
        assert self.proc is not None
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode} before "
                                   f"it was ready; the end of its log ({self.log_path}):\n"
                                   f"{self.log_tail()}")  # fmt: skip
            try:
                with urllib.request.urlopen(self.base_url + "/v1/models", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                pass
            self.sample_rss()
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not answer {self.base_url}/v1/models within "
                           f"{timeout_s:.0f} s (--ready-timeout); the end of its log "
                           f"({self.log_path}):\n{self.log_tail()}")  # fmt: skip

    def signal_group(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def freeze(self) -> None:
        self.signal_group(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal_group(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.thaw()
        self.signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def pids(self) -> list[int]:
        return group_pids(self.proc.pid) if self.proc is not None else []

    def sample_rss(self) -> float:
        rss = sum(proc_status_kib(p, "VmRSS") for p in self.pids()) / 1024
        self.peak_rss_mib = max(self.peak_rss_mib, rss)
        return rss

    def memory(self) -> dict[str, float]:
        pids = self.pids()
        return {"peak_rss_mib": self.peak_rss_mib, "processes": len(pids),
                "sum_vmhwm_mib": sum(proc_status_kib(p, "VmHWM") for p in pids) / 1024,
                "pss_mib": sum(pss_kib(p) for p in pids) / 1024}  # fmt: skip


def group_pids(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` (from /proc/PID/stat's 5th field)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # state, ppid, pgrp
            out.append(int(d.name))
    return out


def proc_status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size (shared pages split between their users), summable over a tree."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples the running server's tree RSS every ``every_s`` in a thread."""

    def __init__(self, server: Server, every_s: float = 0.25) -> None:
        self.server, self.every_s = server, every_s
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            self.server.sample_rss()

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_servers(a: argparse.Namespace) -> list[Server]:
    """The servers ``--engines`` names (membound once per ``--membound-quant`` too), each on
    a free port, with its command and environment."""
    from membound.bench.results import precision_name
    from membound.kernels.cpu_hugepages import NO_REEXEC, env_with_tunable

    base = {"OMP_NUM_THREADS": str(a.threads)}
    if a.hugepages:
        base = env_with_tunable(base)
    out = []
    for name in a.engines:
        if name == "membound":
            env = {**base, "PYTHONPATH": str(HERE.parent / "src")}
            if not a.hugepages:
                env[NO_REEXEC] = "1"
            for quant in [None, *a.membound_quant]:
                extra = ["--quantization", quant] if quant else []
                port, label = free_port(), quant or precision_name(a.dtype)
                argv = [sys.executable, "-m", "membound.entrypoints.cli", "serve", a.model,
                        *common_args(a, port), *extra, "--no-access-log",
                        "--disable-log-requests"]  # fmt: skip
                out.append(Server(f"membound-{label}", argv, env, port))
        elif name == "vllm":
            bind = a.vllm_bind or f"0-{a.threads - 1}"
            env = {**base, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": bind}
            port = free_port()
            argv = [a.vllm_python, "-m", "vllm.entrypoints.launchers.api_server.entry",
                    "--model", a.model, *common_args(a, port),
                    "--disable-uvicorn-access-log"]  # fmt: skip
            out.append(Server(f"vllm-{precision_name(a.dtype)}", argv, env, port))
        else:
            out.append(llamacpp_server(a, base, free_port()))
    return out


def common_args(a: argparse.Namespace, port: int) -> list[str]:
    """membound's and vLLM's shared options (the same flag names in both)."""
    return ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", a.served_name,
            "--dtype", a.dtype, "--max-model-len", str(a.max_len), "--max-num-seqs", "64",
            "--seed", "0"]  # fmt: skip


def llamacpp_server(a: argparse.Namespace, env: dict[str, str], port: int) -> Server:
    worker = str(HERE / "cpu_peers_worker.py")
    eog = json.loads(subprocess.run([a.llamacpp_python, worker, "llamacpp-eog", a.gguf],
                                    check=True, capture_output=True, text=True
                                    ).stdout.splitlines()[0])  # fmt: skip
    t = str(a.threads)
    argv = [a.llamacpp_python, worker, "llamacpp-server", "--model", a.gguf, "--model_alias",
            a.served_name, "--host", "127.0.0.1", "--port", str(port), "--n_ctx",
            str(a.max_len), "--n_threads", t, "--n_threads_batch", t, "--seed", "0",
            "--logits_all", "False", "--interrupt_requests", "False",
            "--verbose", "False"]  # fmt: skip
    body = {"logit_bias": {str(i): -1e9 for i in eog}, "repeat_penalty": 1.0}
    notes = ["llama_cpp.server runs one sequence at a time per model (a lock around the model; "
             "llama-cpp-python 0.3.36 has no batching or parallel slots): concurrent streams "
             "queue, so TTFT includes the wait for the streams ahead",
             f"EOS: no ignore_eos field; logit_bias -1e9 on the end-of-generation ids {eog}",
             "llama.cpp's extra buffer types (AMX, repacked weights) are off: its AMX matmul "
             "faults at ldtilecfg in this VM"]  # fmt: skip
    return Server("llamacpp-q4_1", argv, env, port, extra_body=body, ignore_eos=False,
                  notes=notes)  # fmt: skip
