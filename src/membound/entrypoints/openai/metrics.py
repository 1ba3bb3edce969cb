"""Prometheus metrics for the server under vLLM's names and meanings (``vllm:...``, labelled
``model_name``), so vLLM dashboards and autoscalers read them unchanged; figures vLLM does not
have keep the ``membound:`` prefix.

Gauges and engine counters are read from the engine's latest EngineStats snapshot at scrape
time (a custom collector), so they are exact after every step and every abort. Histograms and
the per-reason request counter are fed on the engine thread by ``on_outputs`` (the
AsyncLLMEngine observer hook); prometheus-client objects are thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from membound.engine.stats import EngineStats
from membound.outputs import RequestOutput

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)
_ITL_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
    0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class _StatsCollector(Collector):
    """Engine gauges and counters from the latest EngineStats snapshot."""

    def __init__(self, stats: Callable[[], EngineStats], model_name: str) -> None:
        self._stats = stats
        self._model = model_name

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        gauges = (
            ("vllm:num_requests_running", "Requests (sequences) in the running batch.",
             s.num_running),
            ("vllm:num_requests_waiting", "Requests (sequences) waiting to be scheduled.",
             s.num_waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage: 1 means 100 percent.", s.kv_usage),
            ("membound:kv_cache_num_blocks", "KV cache blocks in total.", s.kv_num_blocks),
            ("membound:kv_cache_used_blocks", "KV cache blocks in use.",
             s.kv_num_blocks - s.kv_num_free_blocks),
            ("membound:kv_cache_cached_blocks", "KV blocks indexed by the prefix cache (in use "
             "or evictable).", s.kv_num_cached_blocks),
            ("membound:prefix_cache_hit_rate", "Prefix cache hit rate (tokens), since start.",
             s.prefix_cache_hit_rate),
        )
        for name, doc, value in gauges:
            g = GaugeMetricFamily(name, doc, labels=["model_name"])
            g.add_metric([self._model], float(value))
            yield g
        counters = (
            ("vllm:num_preemptions", "Cumulative number of preemptions from the engine.",
             s.num_preemptions),
            ("membound:num_swaps_out", "Preempted sequences swapped out to CPU.",
             s.num_swaps_out),
            ("membound:num_swaps_in", "Swapped sequences brought back.", s.num_swaps_in),
            ("vllm:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens_total),
            ("vllm:generation_tokens", "Number of generation tokens processed.",
             s.generation_tokens_total),
            ("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried "
             "tokens.", s.prefix_cache_queries_total),
            ("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached "
             "tokens.", s.prefix_cache_hits_total),
        )
        for name, doc, value in counters:
            c = CounterMetricFamily(name, doc, labels=["model_name"])
            c.add_metric([self._model], float(value))
            yield c


def request_finish_reason(out: RequestOutput) -> str:
    """One reason per request: abort if any choice was aborted, else length if any ran out of
    tokens, else stop."""
    reasons = {c.finish_reason or "abort" for c in out.outputs}
    for reason in ("abort", "length"):
        if reason in reasons:
            return reason
    return "stop"


class ServerMetrics:
    """One registry per app (several apps may live in one process, e.g. in tests)."""

    def __init__(self, model_name: str, stats: Callable[[], EngineStats]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatsCollector(stats, model_name))
        labels = ["model_name"]

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"vllm:{name}", doc, labels, buckets=buckets,
                             registry=self.registry).labels(model_name)

        self.ttft = hist("time_to_first_token_seconds", "Time to first token.", _LATENCY_BUCKETS)
        self.itl = hist("inter_token_latency_seconds", "Time between tokens of a sequence.",
                        _ITL_BUCKETS)
        self.e2e = hist("e2e_request_latency_seconds", "Arrival to finish.", _LATENCY_BUCKETS)
        self.queue_time = hist("request_queue_time_seconds", "Arrival to first scheduled.",
                               _LATENCY_BUCKETS)
        self.prompt_len = hist("request_prompt_tokens", "Prompt tokens per request.",
                               _TOKEN_BUCKETS)
        self.gen_len = hist("request_generation_tokens", "Generated tokens per request.",
                            _TOKEN_BUCKETS)
        self._success = Counter(
            "vllm:request_success", "Count of successfully processed requests (one per "
            "request, labelled with its finish reason: stop, length or abort).",
            ["model_name", "finished_reason"], registry=self.registry,
        )
        self._model = model_name
        # (request id, choice index) -> (tokens seen, time of the last one); engine thread only
        self._seen: dict[tuple[str, int], tuple[int, float]] = {}

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # ---- engine thread -----------------------------------------------------------------
    def on_outputs(self, outputs: list[RequestOutput], now: float) -> None:
        for out in outputs:
            self._observe_tokens(out, now)
            if out.finished:
                self._observe_finished(out, now)

    def _observe_tokens(self, out: RequestOutput, now: float) -> None:
        for c in out.outputs:
            key = (out.request_id, c.index)
            count, last = self._seen.get(key, (0, 0.0))
            new = len(c.token_ids) - count
            if new <= 0:
                continue
            if count > 0:
                gap = (now - last) / new
                for _ in range(min(new, 64)):
                    self.itl.observe(gap)
            self._seen[key] = (len(c.token_ids), now)

    def _observe_finished(self, out: RequestOutput, now: float) -> None:
        for c in out.outputs:
            self._seen.pop((out.request_id, c.index), None)
        self._success.labels(self._model, request_finish_reason(out)).inc()
        m = out.metrics
        if m is not None:
            if m.first_token_time is not None:
                self.ttft.observe(m.first_token_time - m.arrival_time)
            if m.first_scheduled_time is not None:
                self.queue_time.observe(m.first_scheduled_time - m.arrival_time)
            self.e2e.observe((m.finished_time or now) - m.arrival_time)
        self.prompt_len.observe(len(out.prompt_token_ids))
        self.gen_len.observe(sum(len(c.token_ids) for c in out.outputs))
