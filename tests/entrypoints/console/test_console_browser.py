"""The console in a real browser (headless Debian Chromium driven by Playwright): the chat
page streams a reply, the dashboard's block map follows requests and returns to no block in
use, and the planner page reproduces `membound plan --json`."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

from entrypoints.openai.openai_server_harness import API_KEY, MODEL
from membound.planner import cli as planner_cli


def enter_key(page: Any) -> None:
    """The page asks for the key after a 401; give it, as a user would."""
    page.wait_for_selector("#key-panel:not([hidden])")
    assert "needs an API key" in page.inner_text("#key-message")
    page.fill("#key-input", API_KEY)
    page.click("#key-form button[type=submit]")
    assert page.inner_text("#key-status") == "key set"
    assert page.evaluate("sessionStorage.getItem('membound.apiKey')") == API_KEY


def test_chat_page_streams_a_reply(page: Any, console_server: Any) -> None:
    page.goto(console_server.url + "/")
    enter_key(page)
    page.wait_for_function("() => document.querySelector('#model').value === 'tiny'")
    page.eval_on_selector("#temperature", "el => { el.value = '0'; }")  # greedy
    page.fill("#max-tokens", "24")
    page.fill("#prompt", "Tell me about paged attention.")
    page.press("#prompt", "Enter")
    reply = page.wait_for_selector(".msg.assistant[data-state=done]")
    assert page.inner_text(".msg.user .text") == "Tell me about paged attention."
    assert reply.eval_on_selector(".text", "el => el.textContent").strip()
    assert int(reply.get_attribute("data-chunks")) > 1  # drawn piece by piece as it streamed
    figures = page.inner_text(".msg.assistant .figures")
    assert "TTFT" in figures and "tokens/s" in figures and "24 tokens" in figures, figures
    assert "finish: length" in figures


def test_dashboard_block_map_follows_requests(page: Any, console_server: Any,
                                              slow_steps: float) -> None:
    page.goto(console_server.url + "/console/dashboard?interval=200")
    enter_key(page)
    page.wait_for_selector("#kv-map[data-num-blocks='96']")
    assert page.get_attribute("#kv-map", "data-num-in-use") == "0"

    results: list[int] = []

    def run(i: int) -> None:
        body = {"model": MODEL, "prompt": f"request {i} walks through the cache",
                "max_tokens": 80, "ignore_eos": True}
        r = httpx.post(console_server.url + "/v1/completions", json=body, timeout=60,
                       headers={"Authorization": f"Bearer {API_KEY}"})
        results.append(r.status_code)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    # while they run, watch what the page shows: blocks in use, owned by the requests
    in_use: set[int] = set()
    most_owners = 0
    rows_seen = False
    while any(t.is_alive() for t in threads):
        shown = page.evaluate("() => ({...document.querySelector('#kv-map').dataset})")
        in_use.add(int(shown["numInUse"]))
        most_owners = max(most_owners, len(shown["owners"].split()))
        rows_seen = rows_seen or "running" in page.inner_text("#requests tbody")
        page.wait_for_timeout(100)
    for t in threads:
        t.join()
    assert results == [200, 200, 200]
    assert len(in_use - {0}) >= 2, f"the map did not change while requests ran: {in_use}"
    assert most_owners >= 2 and rows_seen
    # all finished: no block in use; prefix caching leaves evictable cached blocks, shown apart
    page.wait_for_function("() => document.querySelector('#kv-map').dataset.numInUse === '0'")
    assert page.get_attribute("#kv-map", "data-owners") == ""
    assert int(page.get_attribute("#kv-map", "data-num-cached")) > 0
    assert "0 in use" in page.inner_text("#kv-summary")
    assert "no request running" in page.inner_text("#requests tbody")
    assert page.inner_text("#stat-running") == "0"


def test_planner_page_reproduces_membound_plan_json(page: Any, console_server: Any,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    page.goto(console_server.url + "/console/planner")
    enter_key(page)
    page.wait_for_selector("#f-gpus input[value='h200']")
    page.select_option("#f-model", "llama-3-8b")
    page.click("#gpu-none")
    page.check("#f-gpus input[value='h100-sxm']")
    page.check("#f-gpus input[value='h200']")
    page.select_option("#f-precision", "fp8")
    page.fill("#f-concurrency", "8")
    page.fill("#f-target_tpot", "50ms")
    page.click("#plan-run")
    page.wait_for_selector("#plan-out:not([hidden])")
    shown = json.loads(page.text_content("#plan-json"))  # inside a closed <details>

    capsys.readouterr()
    argv = ["plan", "--model", "llama-3-8b", "--gpu", "h100-sxm,h200", "--precision", "fp8",
            "--concurrency", "8", "--target-tpot", "50ms", "--json"]
    assert planner_cli.main(argv) == 0
    expected = json.loads(capsys.readouterr().out)
    assert shown == expected
    rows = page.locator("#plan-table tbody tr")
    assert rows.count() == len(expected["results"])
    assert [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())] == \
        [r["gpu"] for r in expected["results"]]
    rec = expected["recommendation"]
    assert f"Recommended: {rec['gpu']} × {rec['tp']}" in page.inner_text("#plan-recommendation")
    assert "--precision=fp8" in page.inner_text("#plan-command")
