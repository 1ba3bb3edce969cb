"""``bench serve`` against membound's own OpenAI server on loopback (skipped when the server
or its dependencies are not importable)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from membound.entrypoints.cli import main

pytest.importorskip("aiohttp")
uvicorn = pytest.importorskip("uvicorn")
api_server = pytest.importorskip("membound.entrypoints.openai.api_server")


@contextmanager
def membound_server(model: Path, api_key: str | None = None) -> Iterator[str]:
    from membound.engine.engine_args import EngineArgs
    from membound.engine.llm_engine import LLMEngine

    engine = LLMEngine.from_engine_args(
        EngineArgs(model=str(model), block_size=4, num_kv_blocks=128, max_num_seqs=8)
    )
    app = api_server.build_app(
        engine, api_server.ServerArgs(served_model_names=("tiny",), api_key=api_key)
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "membound server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def test_serve_against_membound_server(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    with membound_server(tiny_llama) as url:
        opts = "--num-prompts 6 --input-len 8 --output-len 4 --ignore-eos --request-rate 50"
        argv = ["bench", "serve", "--base-url", url, "--tokenizer", str(tiny_llama)]
        rc = main([*argv, *opts.split(), "--max-concurrency", "3", "--disable-tqdm",
                   "--output-json", str(out)])  # fmt: skip
    assert rc == 0
    doc: dict[str, Any] = json.loads(out.read_text())
    f = doc["figures"]
    assert f["num_requests"] == 6 and f["completed"] + f["failed"] == 6
    assert f["failed"] == 0, f["errors"]
    assert f["total_output_tokens"] == 6 * 4 and f["max_concurrent_requests"] <= 3
    assert doc["config"]["served_model"] == "tiny" and f["ttft_ms_mean"] > 0
    assert doc["model"]["config"]["hidden_size"] == 64  # read from the --tokenizer folder


def test_serve_with_api_key_and_the_servers_vocabulary(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --tokenizer and no --vocab-size: prompt ids come from the server's /tokenize, so
    none falls outside the tiny model's 320-token vocabulary; the key comes from the flag or
    $OPENAI_API_KEY."""
    out = tmp_path / "serve.json"
    opts = [
        "--num-prompts",
        "4",
        "--input-len",
        "8",
        "--output-len",
        "3",
        "--ignore-eos",
        "--disable-tqdm",
        "--output-json",
        str(out),
    ]
    with membound_server(tiny_llama, api_key="sekrit") as url:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        assert main(["bench", "serve", "--base-url", url, *opts]) == 2  # 401 on /tokenize
        assert main(["bench", "serve", "--base-url", url, "--api-key", "sekrit", *opts]) == 0
        f = json.loads(out.read_text())["figures"]
        assert f["failed"] == 0 and f["total_output_tokens"] == 4 * 3, f["errors"]
        monkeypatch.setenv("OPENAI_API_KEY", "sekrit")
        assert main(["bench", "serve", "--base-url", url, *opts]) == 0
        assert json.loads(out.read_text())["figures"]["failed"] == 0
