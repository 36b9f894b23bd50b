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
        self.duration = Histogram(
            "llm_request_seconds",
            "Time from request to the end of the answer.",
            ["endpoint"],
            buckets=DURATION_BUCKETS,
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

    def observe(self, record: dict[str, Any]) -> None:
        """A finished request's record, as the request log hands it on."""
        endpoint = record["endpoint"]
        requests, first_chunk, duration = self._children(endpoint, record["outcome"])
        requests.inc()
        if record["first_chunk_ms"] is not None:
            first_chunk.observe(record["first_chunk_ms"] / 1000)
        if record["total_ms"] is not None:
            duration.observe(record["total_ms"] / 1000)
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
