"""The RequestLog service: ring buffer, subscribers, counters, the log line."""

from __future__ import annotations

import logging

from llmserver.request_log import RequestLog, RetrievalDetails, RetrievalHit


def finish(log: RequestLog, request_id: str, **fields) -> dict:
    record = log.begin(request_id, "chat")
    for name, value in fields.items():
        setattr(record, name, value)
    log.finish(record)
    return log.recent()[-1]


def test_the_ring_buffer_keeps_the_newest_records():
    log = RequestLog(size=3)
    for n in range(5):
        finish(log, f"r{n}")
    assert [r["request_id"] for r in log.recent()] == ["r2", "r3", "r4"]
    assert [r["request_id"] for r in log.recent(2)] == ["r3", "r4"]


def test_every_record_has_a_unique_key_even_when_request_ids_repeat():
    log = RequestLog()
    for _ in range(3):
        finish(log, "same-id-from-the-client")
    assert len({r["key"] for r in log.recent()}) == 3
    assert RequestLog().begin("x", "chat").key == ""  # set when it finishes


def test_counters_follow_begin_and_finish():
    log = RequestLog()
    record = log.begin("r1", "rag")
    assert log.in_flight == 1
    record.cancel()
    log.finish(record)
    assert log.in_flight == 0 and log.totals["cancelled"] == 1
    assert log.recent()[-1]["status"] == 499 and log.recent()[-1]["outcome"] == "cancelled"


def test_a_failing_subscriber_is_dropped_and_the_others_still_hear(caplog):
    log = RequestLog()
    heard = []

    def broken(record: dict) -> None:
        raise RuntimeError("subscriber bug")

    log.subscribe(broken)
    log.subscribe(heard.append)
    with caplog.at_level(logging.CRITICAL, logger="llmserver.requests"):
        finish(log, "r1")
    finish(log, "r2")
    assert [r["request_id"] for r in heard] == ["r1", "r2"] and log.subscriber_count == 1


def test_one_log_line_per_record_with_the_details(caplog):
    log = RequestLog(text_chars=10)
    with caplog.at_level(logging.INFO, logger="llmserver.requests"):
        finish(
            log,
            "r1",
            model="m",
            turn_id=7,
            last_user_message=log.text("a rather long question"),
            retrieval=RetrievalDetails("q", [RetrievalHit("doc", 2.5)], 0.1),
        )
    (line,) = [r.getMessage() for r in caplog.records if r.name == "llmserver.requests"]
    assert line.startswith("r1 chat model=m status=200 outcome=ok")
    assert "turn_id=7" in line and "hits=doc:2.5" in line and "user='a rather …'" in line
