"""Prometheus metrics (prometheus-client), correct across workers: with several workers each writes its samples to
a shared folder (the library's multiprocess mode, PROMETHEUS_MULTIPROC_DIR, set by the supervisor before it forks)
and /metrics on any worker adds them up.

prometheus_client is imported inside the class, not at the top: the library chooses its multiprocess mode when it
is first imported, which must happen in the worker, after the supervisor has set the folder.
"""

from __future__ import annotations

import os
from typing import Any

from .tools.registry import UNKNOWN_SOURCE

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self._registry = None if self.multiprocess else CollectorRegistry()
        registry = {} if self.multiprocess else {"registry": self._registry}
        self.requests = Counter(
            "llm_requests_total", "Completion requests by endpoint and outcome.", ["endpoint", "outcome"], **registry
        )
        self.first_chunk = Histogram(
            "llm_first_chunk_seconds",
            "Time to the first chunk sent.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            **registry,
        )
        self.first_sentence = Histogram(
            "llm_first_sentence_seconds",
            "Time to the answer's first whole sentence at the caller (what a voice platform's TTS waits for).",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            **registry,
        )
        self.duration = Histogram(
            "llm_request_seconds",
            "Time from request to the end of the answer.",
            ["endpoint"],
            buckets=DURATION_BUCKETS,
            **registry,
        )
        self.tokens = Counter(
            "llm_tokens_total",
            "Tokens the upstreams counted, by endpoint and kind: prompt, cached (of the prompt), completion.",
            ["endpoint", "kind"],
            **registry,
        )
        self.in_flight = Gauge(
            "llm_streams_in_flight", "Completion requests being answered now.", multiprocess_mode="livesum", **registry
        )
        self.rejected = Counter(
            "llm_requests_rejected_total",
            "Requests refused because MAX_STREAMS were in flight.",
            ["endpoint"],
            **registry,
        )
        self.upstream_errors = Counter(
            "llm_upstream_errors_total", "Failed upstream calls, by the error's code.", ["kind"], **registry
        )
        self.retrieval = Histogram(
            "llm_retrieval_seconds", "Retrieval time of RAG requests.", buckets=LATENCY_BUCKETS, **registry
        )
        self.tools = Histogram(
            "llm_tool_seconds", "Server tool calls.", ["tool", "outcome"], buckets=DURATION_BUCKETS, **registry
        )
        self.dropped = Counter(
            "llm_log_records_dropped_total",
            "Request records that could not be shipped or stored.",
            ["where"],
            **registry,
        )
        self._cached: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self.upstreams = UpstreamMetrics(registry)

    def observe(self, record: dict[str, Any]) -> None:
        """A finished request's record, as the request log hands it on."""
        endpoint = record["endpoint"]
        requests, first_chunk, duration = self._children(endpoint, record["outcome"])
        requests.inc()
        if record["first_chunk_ms"] is not None:
            first_chunk.observe(record["first_chunk_ms"] / 1000)
        if record["total_ms"] is not None:
            duration.observe(record["total_ms"] / 1000)
        for kind in ("prompt", "cached", "completion"):
            count = record.get(f"{kind}_tokens")
            if count:
                self.tokens.labels(endpoint, kind).inc(count)
        if record.get("first_sentence_ms") is not None:
            self.first_sentence.labels(endpoint).observe(record["first_sentence_ms"] / 1000)
        code = record.get("error_code") or ""
        if code.startswith("upstream") or code in ("first_token_timeout", "completion_timeout"):
            self.upstream_errors.labels(code).inc()
        retrieval = record.get("retrieval")
        if retrieval is not None:
            self.retrieval.observe(retrieval["ms"] / 1000)
        for call in record.get("tool_calls") or ():
            # A name the registry does not offer is the model's invention, unbounded: they all share one series.
            tool = UNKNOWN_SOURCE if call["source"] == UNKNOWN_SOURCE else call["name"]
            self.tools.labels(tool, call["outcome"]).observe(call["ms"] / 1000)

    def _children(self, endpoint: str, outcome: str) -> tuple[Any, Any, Any]:
        """The labelled series a request updates, looked up once per endpoint and outcome (`labels()` is the
        costly part of an update)."""
        found = self._cached.get((endpoint, outcome))
        if found is None:
            found = (
                self.requests.labels(endpoint, outcome),
                self.first_chunk.labels(endpoint),
                self.duration.labels(endpoint),
            )
            self._cached[(endpoint, outcome)] = found
        return found

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self._registry), CONTENT_TYPE_LATEST

    @staticmethod
    def worker_exited(pid: int) -> None:
        """The supervisor tells the library a worker is gone, so its live gauges stop counting."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)


# Failure codes the router's own errors carry; an upstream's own codes (unbounded text) are counted by HTTP status.
ROUTING_CODES = frozenset(
    {
        "upstream_unreachable",
        "upstream_timeout",
        "first_token_deadline",
        "upstream_error",
        "upstream_stream_broken",
        "upstream_stream_incomplete",
        "upstream_bad_response",
        "upstream_bad_chunk",
    }
)
UPSTREAM_STATES = ("healthy", "probing", "skipped")


class UpstreamMetrics:
    """What the router reports of each upstream (llmserver.upstream.routing.RoutingObserver), labelled
    `upstream="NAME"` with the operator's names (at most 32 of them)."""

    def __init__(self, registry: dict[str, Any]) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        labels = ["upstream"]
        self.first_chunk_seconds = Histogram(
            "llm_upstream_first_chunk_seconds",
            "Time from an upstream request to its first chunk (attempts that got one).",
            labels,
            buckets=LATENCY_BUCKETS,
            **registry,
        )
        self.attempts = Counter("llm_upstream_attempts_total", "Requests made to each upstream.", labels, **registry)
        self.failures = Counter(
            "llm_upstream_failures_total",
            "Upstream requests that failed before their first chunk, by reason.",
            ["upstream", "reason"],
            **registry,
        )
        self.hedges = Counter(
            "llm_upstream_hedges_total", "Hedged attempts started on each upstream.", labels, **registry
        )
        self.hedges_won = Counter(
            "llm_upstream_hedges_won_total", "Hedged attempts whose first chunk came first.", labels, **registry
        )
        self.cancelled = Counter(
            "llm_upstream_cancelled_total",
            "Attempts cancelled before their first chunk (the loser of a hedged race, or the caller left).",
            labels,
            **registry,
        )
        self.state = Gauge(
            "llm_upstream_state",
            "1 for each upstream's present state (healthy, probing, skipped), 0 for the others.",
            ["upstream", "state"],
            multiprocess_mode="livemax",
            **registry,
        )

        self._per_request: dict[str, tuple[Any, Any]] = {}  # the series every request updates, looked up once

    def known(self, upstream: str) -> None:
        """Makes an upstream's series exist from the start, healthy."""
        self.state_changed(upstream, "healthy")

    def _series(self, upstream: str) -> tuple[Any, Any]:
        found = self._per_request.get(upstream)
        if found is None:
            found = self._per_request[upstream] = (
                self.attempts.labels(upstream),
                self.first_chunk_seconds.labels(upstream),
            )
        return found

    def attempt_started(self, upstream: str, hedge: bool) -> None:
        self._series(upstream)[0].inc()
        if hedge:
            self.hedges.labels(upstream).inc()

    def first_chunk(self, upstream: str, seconds: float, hedge: bool) -> None:
        self._series(upstream)[1].observe(seconds)

    def attempt_failed(self, upstream: str, code: str, status: int) -> None:
        self.failures.labels(upstream, code if code in ROUTING_CODES else f"http_{int(status)}").inc()

    def attempt_cancelled(self, upstream: str) -> None:
        self.cancelled.labels(upstream).inc()

    def hedge_won(self, upstream: str) -> None:
        self.hedges_won.labels(upstream).inc()

    def state_changed(self, upstream: str, state: str) -> None:
        for each in UPSTREAM_STATES:
            self.state.labels(upstream, each).set(1 if each == state else 0)
