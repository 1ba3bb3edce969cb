"""Graceful shutdown of a real ``membound serve`` process (the bundled default model, on
127.0.0.1): on SIGTERM new requests get 503, a short request still finishes, long streams
end with an error event and ``data: [DONE]``, the log has one line per event and no
traceback, and the exit code is 0. Every wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import membound

DRAIN_S = 4.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(port: int, *extra: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(membound.__file__).resolve().parents[1]),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "membound.entrypoints.cli",
        "serve",
        "--port",
        str(port),
        "--num-kv-blocks",
        "256",
        "--max-model-len",
        "1024",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"membound serve exited early:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("membound serve did not become healthy in 180s")


def _stream(url: str, max_tokens: int, events: list[str], started: threading.Event) -> None:
    body = {"prompt": "hello", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                started.set()


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
        raise AssertionError(f"the server did not exit within 60s of the drain:\n{out}") from None
    return proc.returncode, out


@pytest.mark.slow
def test_sigterm_drains_then_exits_cleanly() -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(port, "--drain-timeout-s", str(DRAIN_S))
    try:
        longs = [([], threading.Event()) for _ in range(3)]
        threads = [
            threading.Thread(target=_stream, args=(url, 1000, ev, st), daemon=True)
            for ev, st in longs
        ]
        for t in threads:
            t.start()
        assert all(st.wait(60) for _, st in longs), "the long streams did not start"
        short: tuple[list[str], threading.Event] = ([], threading.Event())
        short_thread = threading.Thread(target=_stream, args=(url, 3, *short), daemon=True)
        short_thread.start()
        assert short[1].wait(60)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:  # the drain begins: new requests are refused while the port still listens
            r = httpx.get(f"{url}/v1/models", timeout=5)
            if r.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_shutting_down"
        for t in [*threads, short_thread]:
            t.join(timeout=DRAIN_S + 30)
            assert not t.is_alive()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        rc, log = _finish(proc)
    assert short[0][-1] == "[DONE]" and not any("error" in e for e in short[0])
    assert json.loads(short[0][-2])["choices"][0]["finish_reason"] == "length"
    for events, _ in longs:
        assert events[-1] == "[DONE]", events[-3:]
        assert json.loads(events[-2])["error"]["code"] == "server_shutting_down"
    assert rc == 0, log
    assert "Traceback" not in log, log
    assert log.count("SIGTERM received") == 1 and log.count("drain ended") == 1, log
    assert "3 request(s) still running were ended" in log, log


@pytest.mark.slow
def test_sigint_on_an_idle_server_exits_zero() -> None:
    port = _free_port()
    proc = _start(port)
    proc.send_signal(signal.SIGINT)
    rc, log = _finish(proc)
    assert rc == 0 and "Traceback" not in log and "drain complete" in log, log
