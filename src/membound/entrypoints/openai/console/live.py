"""The dashboard's data: recent latencies and throughput (LiveRecorder), and the JSON document
``GET /console/api/state`` returns (``state_document``).

LiveRecorder is an EngineObserver: ``on_outputs`` runs on the engine thread after every step;
the server reads the series on the event loop thread, so both sides take ``_lock``. Times are
``time.monotonic()``; the document gives each sample's age in seconds instead (no clocks to
agree on). Samples older than ``window_s`` are dropped, and each series is capped.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from membound.engine.kv_snapshot import CACHED, FREE, EngineSnapshot
from membound.engine.stats import EngineStats
from membound.outputs import RequestOutput

WINDOW_S = 300.0  # the dashboard's "last minutes"
RATE_WINDOW_S = 5.0  # tokens/s is averaged over this many seconds
MAX_SAMPLES = 4096  # per latency series


class LiveRecorder:
    """Time to first token and inter-token latency samples, and tokens per second in
    one-second bins, over the last ``window_s`` seconds."""

    def __init__(self, stats: Callable[[], EngineStats], window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._stats = stats
        self._lock = threading.Lock()
        self._ttft: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)  # (time, seconds)
        self._itl: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)
        self._bins: deque[list[float]] = deque()  # [second, generated, prompt tokens]
        first = stats()
        self._last_totals = (first.generation_tokens_total, first.prompt_tokens_total)
        # engine thread only: (request id, choice index) -> (tokens seen, time of the last)
        self._seen: dict[tuple[str, int], tuple[int, float]] = {}
        self._ttft_done: set[str] = set()

    # ---- engine thread -----------------------------------------------------------------
    def on_outputs(self, outputs: list[RequestOutput], now: float) -> None:
        ttft: list[float] = []
        itl: list[float] = []
        for out in outputs:
            self._latencies(out, now, ttft, itl)
        s = self._stats()
        gen, prompt = s.generation_tokens_total, s.prompt_tokens_total
        d_gen, d_prompt = gen - self._last_totals[0], prompt - self._last_totals[1]
        self._last_totals = (gen, prompt)
        with self._lock:
            self._ttft.extend((now, v) for v in ttft)
            self._itl.extend((now, v) for v in itl)
            if d_gen > 0 or d_prompt > 0:
                second = float(int(now))
                if self._bins and self._bins[-1][0] == second:
                    self._bins[-1][1] += d_gen
                    self._bins[-1][2] += d_prompt
                else:
                    self._bins.append([second, float(d_gen), float(d_prompt)])
            self._prune(now)

    def _latencies(self, out: RequestOutput, now: float, ttft: list[float],
                   itl: list[float]) -> None:
        m = out.metrics
        if (m is not None and m.first_token_time is not None
                and out.request_id not in self._ttft_done):
            self._ttft_done.add(out.request_id)
            ttft.append(m.first_token_time - m.arrival_time)
        for c in out.outputs:
            key = (out.request_id, c.index)
            count, last = self._seen.get(key, (0, 0.0))
            new = len(c.token_ids) - count
            if new > 0:
                if count > 0:
                    itl.extend([(now - last) / new] * min(new, 64))
                self._seen[key] = (len(c.token_ids), now)
            if out.finished:
                self._seen.pop(key, None)
        if out.finished:
            self._ttft_done.discard(out.request_id)

    def _prune(self, now: float) -> None:
        oldest = now - self.window_s
        for series in (self._ttft, self._itl):
            while series and series[0][0] < oldest:
                series.popleft()
        while self._bins and self._bins[0][0] < oldest - 1:
            self._bins.popleft()

    # ---- readers (any thread) ----------------------------------------------------------
    def series(self, now: float) -> dict[str, Any]:
        """The samples as ``[age_s, value]`` pairs (oldest first), tokens/s per second."""
        with self._lock:
            self._prune(now)
            ttft = [[_r(now - t), _r(v)] for t, v in self._ttft]
            itl = [[_r(now - t), _r(v)] for t, v in self._itl]
            bins = [[_r(now - b[0]), int(b[1]), int(b[2])] for b in self._bins]
        return {"window_s": self.window_s, "ttft_s": ttft, "itl_s": itl,
                "tokens_per_s": bins}

    def tokens_per_s(self, now: float) -> dict[str, float]:
        """Generated and prompt tokens per second over the last RATE_WINDOW_S seconds."""
        start = int(now) - RATE_WINDOW_S  # whole seconds, so a full window is averaged
        with self._lock:
            gen = sum(b[1] for b in self._bins if b[0] >= start)
            prompt = sum(b[2] for b in self._bins if b[0] >= start)
        span = now - start
        return {"generation": _r(gen / span), "prompt": _r(prompt / span),
                "window_s": RATE_WINDOW_S}


class ObserverTee:
    """Forwards each step's outputs to several observers; one failing does not stop the
    others (its error is re-raised after all ran, and the engine logs it)."""

    def __init__(self, *observers: Any) -> None:
        self.observers = [o for o in observers if o is not None]

    def on_outputs(self, outputs: list[RequestOutput], now: float) -> None:
        error: Exception | None = None
        for observer in self.observers:
            try:
                observer.on_outputs(outputs, now)
            except Exception as e:  # noqa: BLE001 - re-raised below, after the others
                error = e
        if error is not None:
            raise error


def _r(value: float) -> float:
    return round(value, 6)


def state_document(snap: EngineSnapshot, recorder: LiveRecorder, now: float,
                   model: str, max_model_len: int) -> dict[str, Any]:
    """The body of ``GET /console/api/state`` (documented in docs/console.md)."""
    stats = snap.stats
    return {
        "model": model,
        "max_model_len": max_model_len,
        "num_running": len(snap.running),
        "num_waiting": len(snap.waiting),
        "requests": {
            "running": [asdict(r) for r in snap.running],
            "waiting": [asdict(r) for r in snap.waiting],
        },
        "tokens_per_s": recorder.tokens_per_s(now),
        "kv": {
            "num_blocks": snap.num_blocks,
            "block_size": snap.block_size,
            "num_free": snap.num_free,
            "num_in_use": snap.num_in_use,
            "num_cached_evictable": snap.num_cached_evictable,
            "usage": _r(stats.kv_usage),
            "codes": {str(FREE): "free", str(CACHED): "cached prefix (evictable)",
                      "k >= 0": "in use by owners[k]"},
            "blocks": list(snap.blocks),
            "owners": list(snap.owners),
            "shared": list(snap.shared),
        },
        "memory": snap.memory,
        "counters": {
            "num_preemptions": stats.num_preemptions,
            "num_swaps_out": stats.num_swaps_out,
            "num_swaps_in": stats.num_swaps_in,
            "prompt_tokens_total": stats.prompt_tokens_total,
            "generation_tokens_total": stats.generation_tokens_total,
            "prefix_cache_queries_total": stats.prefix_cache_queries_total,
            "prefix_cache_hits_total": stats.prefix_cache_hits_total,
            "prefix_cache_hit_rate": _r(stats.prefix_cache_hit_rate),
        },
        "series": recorder.series(now),
    }
