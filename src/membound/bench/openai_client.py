"""One streamed request to an OpenAI-compatible ``/v1/completions`` endpoint, timed the way
vLLM's serving benchmark times it (``benchmarks/backend_request_func.py``):

* TTFT = from sending the request to the first server-sent-event chunk that carries choices;
* ITL  = the gap between each later such chunk and the one before it;
* latency (end-to-end) = from sending to the last such chunk;
* output tokens = the ``usage.completion_tokens`` the server reports
  (``stream_options.include_usage``); without usage, ``max_tokens`` when the server says it
  stopped for length (``finish_reason: "length"``: it generated exactly that many; servers
  such as llama_cpp.server send no usage in streams and merge tokens into chunks), else the
  chunk count;
* finish reason = the last ``finish_reason`` the stream carried ("" when none);
* success = HTTP 200 and at least one chunk received, with no error event.

``aiohttp`` is imported by the caller (``serve.py``) inside its functions.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestResult:
    """What one request did. Times in seconds; ``start_s`` relative to the benchmark start."""

    success: bool = False
    prompt_len: int = 0
    output_len: int = 0
    ttft_s: float = 0.0
    latency_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    start_s: float = 0.0
    error: str = ""
    finish_reason: str = ""

    @property
    def tpot_s(self) -> float | None:
        """(latency - TTFT) / (output tokens - 1): vLLM's TPOT, None for one-token replies."""
        if not self.success or self.output_len <= 1:
            return None
        return (self.latency_s - self.ttft_s) / (self.output_len - 1)

    @property
    def end_s(self) -> float:
        return self.start_s + self.latency_s

    def chunk_times(self) -> list[float]:
        """Arrival time of each chunk relative to the benchmark start."""
        if not self.success:
            return []
        times = [self.start_s + self.ttft_s]
        for gap in self.itl_s:
            times.append(times[-1] + gap)
        return times


def completion_payload(
    model: str, prompt: str | list[int], max_tokens: int, *, ignore_eos: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    payload: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        payload["ignore_eos"] = True
    payload.update(extra or {})
    return payload


def _events(line: bytes) -> str | None:
    """The data of one SSE line, or None for blank lines, comments and other fields."""
    text = line.decode("utf-8", errors="replace").strip()
    if not text.startswith("data:"):
        return None
    return text[5:].strip()


async def send_completion(
    session: Any, url: str, payload: dict[str, Any], prompt_len: int | None, t_base: float
) -> RequestResult:
    """POST ``payload`` (streaming) and time the reply; never raises for request errors."""
    result = RequestResult(prompt_len=prompt_len or 0)
    st = time.perf_counter()
    result.start_s = st - t_base
    last = st
    chunks = 0
    usage_tokens = None
    try:
        async with session.post(url, json=payload) as resp:
            if resp.status != 200:
                body = (await resp.text())[:200]
                result.error = f"HTTP {resp.status}: {body}"
                return result
            async for line in resp.content:
                data = _events(line)
                if data is None or data == "[DONE]":
                    continue
                event = json.loads(data)
                if event.get("error"):
                    result.error = f"error event: {str(event['error'])[:200]}"
                    return result
                now = time.perf_counter()
                if event.get("choices"):
                    if chunks == 0:
                        result.ttft_s = now - st
                    else:
                        result.itl_s.append(now - last)
                    last = now
                    chunks += 1
                    reason = event["choices"][0].get("finish_reason")
                    result.finish_reason = str(reason) if reason else result.finish_reason
                usage = event.get("usage") or {}
                if usage.get("completion_tokens") is not None:
                    usage_tokens = int(usage["completion_tokens"])
                if usage.get("prompt_tokens") is not None:
                    result.prompt_len = int(usage["prompt_tokens"])
    except Exception as e:  # connection refused, reset, timeout, bad JSON: a failed request
        result.error = f"{type(e).__name__}: {e}"[:300]
        return result
    if chunks == 0:
        result.error = "the stream ended without a single completion chunk"
        return result
    result.success = True
    result.latency_s = last - st
    if usage_tokens is not None:
        result.output_len = usage_tokens
    elif result.finish_reason == "length" and payload.get("max_tokens"):
        result.output_len = int(payload["max_tokens"])
    else:
        result.output_len = chunks
    return result


async def first_model_id(session: Any, base_url: str) -> str | None:
    """The first model a server lists at ``/v1/models``, or None."""
    try:
        async with session.get(f"{base_url}/v1/models") as resp:
            if resp.status != 200:
                return None
            data = await resp.json()
        return str(data["data"][0]["id"])
    except Exception:
        return None


API_KEY_ENV = "OPENAI_API_KEY"


def auth_headers(api_key: str | None) -> dict[str, str]:
    """``Authorization: Bearer`` for ``api_key``, else ``$OPENAI_API_KEY``; none without."""
    key = api_key or os.environ.get(API_KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


def _random_text(seed: int, words: int) -> str:
    """Pronounceable random words (mixed case, digits, punctuation): text that a tokenizer
    splits into many different tokens."""
    rng = random.Random(seed)
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    out = []
    for _ in range(words):
        word = "".join(
            rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(1, 4))
        )
        word = word.capitalize() if rng.random() < 0.2 else word
        out.append(word + rng.choice(["", "", "", ",", ".", " " + str(rng.randint(0, 999))]))
    return " ".join(out)


async def server_token_pool(session: Any, base_url: str, seed: int = 0) -> list[int]:
    """Token ids the server's own tokenizer produces (its ``/tokenize`` of random text):
    prompts drawn from them are always inside the served model's vocabulary."""
    payload = {"prompt": _random_text(seed, 4000), "add_special_tokens": False}
    try:
        async with session.post(f"{base_url}/tokenize", json=payload) as resp:
            body = await resp.text()
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}: {body[:200]}")
            ids = sorted(set(json.loads(body)["tokens"]))
    except Exception as e:
        raise ValueError(
            f"no tokenizer was given and the server's {base_url}/tokenize could not supply "
            f"token ids ({type(e).__name__}: {e}); pass --tokenizer FOLDER or --vocab-size N"
        ) from None
    if not ids:
        raise ValueError(
            f"{base_url}/tokenize returned no tokens; pass --tokenizer or --vocab-size"
        )
    return ids
