"""Take docs/console-{chat,dashboard,planner}.png: a live server over a tiny random model,
driven by headless Chromium (Playwright, the system browser).

    python tests/entrypoints/console/screenshots.py [OUT_DIR]    # default: docs/
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TESTS))

import httpx  # noqa: E402

from entrypoints.console.conftest import CHROMIUM_FLAGS, chromium_path  # noqa: E402
from entrypoints.openai.openai_server_harness import API_KEY, MODEL, start_server  # noqa: E402
from tiny_models import add_tokenizer, make_checkpoint  # noqa: E402

AUTH = {"Authorization": f"Bearer {API_KEY}"}
SYSTEM = "You are a terse assistant that explains how KV caches page memory. "


def _load(url: str, stop: threading.Event) -> None:
    """Requests that come and go: some share a long system prompt (prefix caching)."""
    i = 0
    while not stop.is_set():
        prompt = (SYSTEM if i % 2 == 0 else "") + f"question number {i}"
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 60 + 9 * (i % 5),
                "ignore_eos": True, "temperature": 0.8, "seed": i}
        httpx.post(url + "/v1/completions", json=body, headers=AUTH, timeout=60)
        i += 1


def _slow_engine(server: Any, delay: float) -> None:
    engine = server.state.engine.engine
    real_step = engine.step

    def slow_step() -> Any:
        time.sleep(delay)
        return real_step()

    engine.step = slow_step


def _key(page: Any) -> None:
    page.wait_for_selector("#key-panel:not([hidden])")
    page.fill("#key-input", API_KEY)
    page.click("#key-form button[type=submit]")


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="membound-console-"))
    model = add_tokenizer(make_checkpoint(folder, "mistral", seed=1))
    server = start_server(model, num_kv_blocks=192, max_model_len=256)
    _slow_engine(server, 0.03)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), headless=True,
                                         args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            page.set_default_timeout(30_000)
            # chat
            page.goto(server.url + "/")
            _key(page)
            page.wait_for_function("() => document.querySelector('#model').value !== ''")
            page.fill("#max-tokens", "40")
            for prompt in ("What does a paged KV cache do?", "And prefix caching?"):
                page.fill("#prompt", prompt)
                page.press("#prompt", "Enter")
                page.wait_for_selector(".msg.assistant[data-state=streaming]", state="detached")
            page.screenshot(path=str(out / "console-chat.png"))
            # dashboard, under load
            stop = threading.Event()
            workers = [threading.Thread(target=_load, args=(server.url, stop), daemon=True)
                       for _ in range(6)]
            for w in workers:
                w.start()
            page.goto(server.url + "/console/dashboard?interval=500")
            page.wait_for_selector("#kv-map[data-num-blocks]")
            page.wait_for_timeout(25_000)
            page.screenshot(path=str(out / "console-dashboard.png"), full_page=True)
            stop.set()
            # planner
            page.goto(server.url + "/console/planner")
            page.wait_for_selector("#f-gpus input[value='h200']")
            page.select_option("#f-model", "llama-3-70b")
            page.click("#gpu-none")
            for gpu in ("h100-sxm", "h200", "b200", "mi300x"):
                page.check(f"#f-gpus input[value='{gpu}']")
            page.select_option("#f-precision", "fp8")
            page.select_option("#f-kv_dtype", "fp8")
            page.fill("#f-concurrency", "32")
            page.fill("#f-target_tpot", "50ms")
            page.click("#plan-run")
            page.wait_for_selector("#plan-out:not([hidden])")
            page.screenshot(path=str(out / "console-planner.png"), full_page=True)
            for w in workers:
                w.join(timeout=60)
            browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs"))
