"""The console's pages and JSON routes over HTTP (no browser): auth, the state document while
requests run and after they end, and the planner route against `membound plan --json`."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from entrypoints.openai.openai_server_harness import API_KEY, MODEL, wait_for
from membound.planner import cli as planner_cli
from membound.planner.presets import PRESET_CONFIGS

PLAN_CASE = {"model": "llama-3-8b", "gpu": "h100,h200", "precision": "fp8", "kv_dtype": "fp8",
             "concurrency": 8, "target_tpot": "50ms", "price_per_gpu_hour": "h100=2.5"}
PLAN_ARGV = ["plan", "--model", "llama-3-8b", "--gpu", "h100,h200", "--precision", "fp8",
             "--kv-dtype", "fp8", "--concurrency", "8", "--target-tpot", "50ms",
             "--price-per-gpu-hour", "h100=2.5", "--json"]


def cli_plan(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert planner_cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _idle(http: httpx.Client) -> bool:
    kv = http.get("/console/api/state").json()["kv"]
    return kv["num_in_use"] == 0


# ---- pages and auth ------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/console/chat", "/console/dashboard", "/console/planner"])
def test_pages_load_without_the_key_with_a_strict_csp(console_server: Any, path: str) -> None:
    r = httpx.get(console_server.url + path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert '<script type="module" src="/console/static/' in r.text
    assert "http://" not in r.text and "https://" not in r.text  # nothing from elsewhere


def test_static_assets_are_served_and_nothing_else(console_server: Any) -> None:
    for name, kind in [("console.css", "text/css"), ("common.js", "text/javascript"),
                       ("chat.js", "text/javascript"), ("dashboard.js", "text/javascript"),
                       ("planner.js", "text/javascript")]:
        r = httpx.get(f"{console_server.url}/console/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
        assert "https://" not in r.text, f"{name} loads something from the network"
    head = httpx.head(console_server.url + "/console/static/common.js")
    assert head.status_code == 200 and head.content == b""
    # anything else goes through the app: the key first, then a 404
    assert httpx.get(console_server.url + "/console/static/../app.py").status_code == 401
    missing = httpx.get(console_server.url + "/console/static/nope.js",
                        headers={"Authorization": f"Bearer {API_KEY}"})
    assert missing.status_code == 404


@pytest.mark.parametrize("method,path", [("GET", "/console/api/state"),
                                         ("GET", "/console/api/plan/options"),
                                         ("POST", "/console/api/plan")])
@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_json_routes_need_the_api_key(console_server: Any, method: str, path: str,
                                      key: str | None) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.request(method, console_server.url + path, headers=headers, json=PLAN_CASE)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


# ---- the dashboard's state -----------------------------------------------------------------
def test_state_when_idle(http: httpx.Client) -> None:
    assert wait_for(lambda: _idle(http))
    s = http.get("/console/api/state").json()
    assert s["model"] == MODEL and s["max_model_len"] == 128
    assert s["num_running"] == 0 and s["requests"] == {"running": [], "waiting": []}
    kv = s["kv"]
    assert kv["num_blocks"] == len(kv["blocks"]) == 96 and kv["block_size"] == 4
    assert set(kv["blocks"]) <= {-1, -2} and kv["owners"] == [] and kv["shared"] == []
    assert kv["num_free"] + kv["num_cached_evictable"] == 96
    mem = s["memory"]
    assert mem["weights_bytes"] > 0 and mem["kv_bytes"] > 0 and mem["num_blocks"] == 96
    assert mem["activation_bytes"] is None  # not measured on CPU
    assert set(s["series"]) == {"window_s", "ttft_s", "itl_s", "tokens_per_s"}


@pytest.mark.usefixtures("slow_steps")
def test_state_follows_a_running_request_and_its_end(http: httpx.Client) -> None:
    assert wait_for(lambda: _idle(http))
    before = http.get("/console/api/state").json()
    body = {"model": MODEL, "prompt": "the block map shows this request", "max_tokens": 60,
            "ignore_eos": True, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as resp:
        lines = resp.iter_lines()
        first = next(lines)
        assert first.startswith("data: {")
        request_id = json.loads(first[6:])["id"]
        s = http.get("/console/api/state").json()
        rows = {r["request_id"]: r for r in s["requests"]["running"]}
        assert request_id in rows, s["requests"]
        row = rows[request_id]
        assert row["status"] == "running" and row["num_prompt_tokens"] > 0
        kv = s["kv"]
        k = kv["owners"].index(request_id)
        assert kv["blocks"].count(k) == row["num_blocks"] > 0
        assert kv["num_in_use"] == row["num_blocks"]
        for _ in lines:  # read to the end
            pass
    assert wait_for(lambda: _idle(http))
    after = http.get("/console/api/state").json()
    assert after["num_running"] == 0 and after["kv"]["owners"] == []
    # prefix caching keeps the request's full blocks as evictable cached prefix
    assert after["kv"]["num_cached_evictable"] > 0
    gen = after["counters"]["generation_tokens_total"] - before["counters"]["generation_tokens_total"]
    assert gen == 60
    assert after["tokens_per_s"]["generation"] > 0
    assert len(after["series"]["ttft_s"]) > len(before["series"]["ttft_s"])
    assert len(after["series"]["itl_s"]) >= len(before["series"]["itl_s"]) + 1
    age, ttft = after["series"]["ttft_s"][-1]
    assert 0 <= age < 60 and 0 < ttft < 30


@pytest.mark.usefixtures("slow_steps")
def test_shared_prefix_blocks_are_listed_once_per_block(http: httpx.Client) -> None:
    """Two requests with one long prompt: the second takes the first's cached blocks."""
    assert wait_for(lambda: _idle(http))
    prompt = "a shared system prompt long enough to fill several blocks of four tokens. "
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 40, "ignore_eos": True,
            "stream": True}
    http.post("/v1/completions", json={**body, "stream": False, "max_tokens": 1})  # warm it
    with http.stream("POST", "/v1/completions", json=body) as a, \
            http.stream("POST", "/v1/completions", json=body) as b:
        lines = [a.iter_lines(), b.iter_lines()]  # kept: a closed iterator closes its stream
        for it in lines:
            assert next(it).startswith("data: {")
        kv = http.get("/console/api/state").json()["kv"]
        assert len(kv["owners"]) == 2
        assert kv["shared"], "the common prefix should be shared"
        assert all(kv["blocks"][i] >= 0 for i in kv["shared"])
    assert wait_for(lambda: _idle(http))


def test_state_is_safe_to_poll_while_the_engine_is_busy(http: httpx.Client) -> None:
    errors: list[BaseException] = []

    def load() -> None:
        try:
            for _ in range(2):
                http.post("/v1/completions", json={"model": MODEL, "prompt": "x" * 20,
                                                   "max_tokens": 20, "ignore_eos": True})
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        s = http.get("/console/api/state").json()
        kv = s["kv"]
        held = sum(r["num_blocks"] for r in s["requests"]["running"])
        assert kv["num_in_use"] <= held  # shared blocks count once in the map
        assert kv["num_in_use"] + kv["num_free"] + kv["num_cached_evictable"] == 96
        time.sleep(0.02)
    for t in threads:
        t.join()
    assert not errors
    assert wait_for(lambda: _idle(http))


# ---- the planner ---------------------------------------------------------------------------
def test_plan_route_reproduces_membound_plan_json(http: httpx.Client,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    r = http.post("/console/api/plan", json=PLAN_CASE)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["plan"] == cli_plan(capsys, PLAN_ARGV)
    assert out["command"].startswith("membound plan --model=llama-3-8b --gpu=h100,h200")
    roof = out["roofline"]
    assert [g["gpu"] for g in roof["gpus"]] == ["h100-sxm", "h200"]
    assert roof["gpus"][0]["peak_tflops"] == 1979  # fp8 dense
    assert len(roof["points"]) == len(out["plan"]["results"])
    assert all(p["intensity"] > 0 and p["tflops"] > 0 for p in roof["points"])


def test_plan_with_an_inline_config_matches_the_preset(http: httpx.Client) -> None:
    preset = http.post("/console/api/plan", json={"model": "qwen3-8b", "gpu": "h200"}).json()
    inline = http.post("/console/api/plan", json={
        "model": "qwen3-8b", "config": PRESET_CONFIGS["qwen3-8b"], "gpu": "h200"}).json()
    assert inline["plan"]["results"] == preset["plan"]["results"]


def test_plan_options(http: httpx.Client) -> None:
    opts = http.get("/console/api/plan/options").json()
    assert "llama-3-8b" in opts["models"] and "fp8" in opts["precisions"]
    assert any(g["name"] == "h100-sxm" for g in opts["gpus"])
    assert opts["defaults"]["input_len"] == 1024 and opts["defaults"]["kv_dtype"] == "bf16"


@pytest.mark.parametrize("body,needle", [
    ({"model": "llama-3-8b", "gpu": "x100"}, "GPU 'x100' is not known"),
    ({"model": "llama-3-8b", "tp": "abc"}, "--tp"),
    ({"model": "llama-3-8b", "precision": "fp7"}, "--precision"),
    ({"model": "llama-3-8b", "target_tpot": "soon"}, "not a duration"),
    ({"model": "/etc/passwd"}, "reads no server files"),
    ({"model": "./config.json"}, "not a preset"),
    ({"gpu": "h100"}, "model is required"),
    ({"modle": "llama-3-8b"}, "unknown field(s) modle"),
    ({"model": "llama-3-8b", "tp": True}, "tp must be"),
    ({"model": "llama-3-8b", "config": "nope"}, "config must be"),
    ({"config": {"architectures": ["LlamaForCausalLM"], "hidden_size": [1]}}, "config"),
])
def test_plan_bad_input_is_a_400_naming_the_problem(http: httpx.Client, body: dict[str, Any],
                                                    needle: str) -> None:
    r = http.post("/console/api/plan", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


def test_plan_body_must_be_a_json_object(http: httpx.Client) -> None:
    headers = {"Content-Type": "application/json"}
    assert http.post("/console/api/plan", content=b"[1]", headers=headers).status_code == 400
    assert http.post("/console/api/plan", content=b"{nope", headers=headers).status_code == 400
    assert http.post("/console/api/plan", content=b"{}").status_code == 415  # not declared JSON


def test_missing_static_files_leave_the_api_serving(tmp_path: Any) -> None:
    from membound.entrypoints.openai.console.pages import load_static

    assert load_static(tmp_path) == {}  # a warning, not a crash at start-up
    assert "/" in load_static() and "/console/static/common.js" in load_static()
