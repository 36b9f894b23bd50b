"""The request log: one record per completion request, kept in a ring buffer, sent to subscribers and to logging."""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

logger = logging.getLogger("llmserver.requests")

Subscriber = Callable[[dict[str, Any]], None]


@dataclass
class RequestRecord:
    request_id: str
    endpoint: str
    started_at: float = field(default_factory=time.time)
    model: str | None = None
    messages: int = 0
    last_user_message: str = ""
    turn_id: Any = None
    engine_fields: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    outcome: str = "ok"  # ok, error, cancelled
    first_chunk_ms: float | None = None
    total_ms: float | None = None
    chunks: int = 0
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # retrieval hits, audio clip, ...
    _start: float = field(default_factory=time.perf_counter, repr=False)

    def mark_chunk(self) -> None:
        if self.first_chunk_ms is None:
            self.first_chunk_ms = round((time.perf_counter() - self._start) * 1000, 3)
        self.chunks += 1

    def fail(self, status: int, message: str) -> None:
        self.status = status
        self.outcome = "error"
        self.error = message

    def cancel(self) -> None:
        self.status = 499  # nginx's "client closed request"
        self.outcome = "cancelled"
        self.error = "client disconnected"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_start")
        return data


class RequestLog:
    """Ring buffer of finished records plus live counters; subscribers get each record as it finishes.

    Subscribers are called synchronously and must not block: the admin WebSocket queues what it receives.
    """

    def __init__(self, size: int = 1000, text_chars: int = 200) -> None:
        self._records: deque[dict[str, Any]] = deque(maxlen=size)
        self._subscribers: list[Subscriber] = []
        self.text_chars = text_chars
        self.in_flight = 0
        self.totals: Counter[str] = Counter()

    def begin(self, request_id: str, endpoint: str) -> RequestRecord:
        self.in_flight += 1
        return RequestRecord(request_id=request_id, endpoint=endpoint)

    def truncate(self, text: str) -> str:
        return text if len(text) <= self.text_chars else text[: self.text_chars - 1] + "…"

    def finish(self, record: RequestRecord) -> None:
        self.in_flight -= 1
        record.total_ms = round((time.perf_counter() - record._start) * 1000, 3)
        self.totals[record.outcome] += 1
        data = record.to_dict()
        self._records.append(data)
        logger.info(
            "%s %s %s status=%s outcome=%s first_chunk_ms=%s total_ms=%s chunks=%d%s",
            record.request_id,
            record.endpoint,
            record.model,
            record.status,
            record.outcome,
            record.first_chunk_ms,
            record.total_ms,
            record.chunks,
            f" error={record.error!r}" if record.error else "",
        )
        for subscriber in list(self._subscribers):
            try:
                subscriber(data)
            except Exception:
                logger.exception("request log subscriber failed; removing it")
                self.unsubscribe(subscriber)

    def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        records = list(self._records)
        return records if limit is None else records[-limit:]

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
