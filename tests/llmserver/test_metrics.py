"""Metrics on their own: what a finished request's record adds to the series, read back from the exposition as
Prometheus scrapes it (prometheus-client's own parser)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from llmserver.metrics import Metrics
from llmserver.request_log import RequestLog


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    body, _ = metrics.exposition()
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def finished(endpoint: str = "chat", **fields) -> dict:
    log = RequestLog()
    record = log.begin("req_m", endpoint)
    record.sent()
    for name, value in fields.items():
        setattr(record, name, value)
    log.finish(record)
    return log.recent()[-1]


def test_a_request_counts_once_by_endpoint_and_outcome_with_its_timings():
    metrics = Metrics()
    metrics.observe(finished("rag"))
    metrics.observe(finished("rag", outcome="cancelled"))
    found = samples(metrics)
    assert found[("llm_requests_total", (("endpoint", "rag"), ("outcome", "ok")))] == 1
    assert found[("llm_requests_total", (("endpoint", "rag"), ("outcome", "cancelled")))] == 1
    assert found[("llm_first_chunk_seconds_count", (("endpoint", "rag"),))] == 2
    assert found[("llm_request_seconds_count", (("endpoint", "rag"),))] == 2


def test_upstream_failures_are_counted_by_their_code():
    metrics = Metrics()
    metrics.observe(finished(error_code="upstream_bad_response", outcome="error", status=502))
    metrics.observe(finished(error_code="first_token_timeout", outcome="error", status=504))
    metrics.observe(finished(error_code="invalid_type", outcome="error", status=400))  # the caller's, not counted
    found = samples(metrics)
    assert found[("llm_upstream_errors_total", (("kind", "upstream_bad_response"),))] == 1
    assert found[("llm_upstream_errors_total", (("kind", "first_token_timeout"),))] == 1
    assert not any(name == "llm_upstream_errors_total" and ("kind", "invalid_type") in labels
                   for name, labels in found)  # fmt: skip
