"""The request log: one record per completion request, kept in a ring buffer, sent to subscribers and to logging."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

logger = logging.getLogger("llmserver.requests")

Subscriber = Callable[[dict[str, Any]], None]


@dataclass
class RequestRecord:
    request_id: str  # the client's own X-Request-Id when it sent one, so not unique: see `key`
    endpoint: str
    started_at: float = field(default_factory=time.time)
    model: str | None = None
    messages: int = 0
    last_user_message: str = ""
    turn_id: Any = None
    engine_fields: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    outcome: str = "ok"  # ok, error, cancelled
    first_chunk_ms: float | None = None  # the first chunk to the client (on /rag: the waiting message)
    upstream_called_ms: float | None = None  # when the upstream call began
    upstream_first_chunk_ms: float | None = None  # when the upstream's first chunk was relayed
    total_ms: float | None = None
    chunks: int = 0
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # retrieval hits, audio clip, ...
    key: str = ""  # unique: this server process and the record's number in it
    _start: float = field(default_factory=time.perf_counter, repr=False)

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self._start) * 1000, 3)

    def mark_chunk(self, count: int = 1) -> None:
        if self.first_chunk_ms is None:
            self.first_chunk_ms = self.elapsed_ms()
        self.chunks += count

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


def describe(record: dict[str, Any]) -> str:
    """The record as one log line (no keys or headers are ever in a record)."""
    parts = [
        record["request_id"],
        record["endpoint"],
        f"model={record['model']}",
        f"status={record['status']}",
        f"outcome={record['outcome']}",
        f"first_chunk_ms={record['first_chunk_ms']}",
        f"total_ms={record['total_ms']}",
        f"chunks={record['chunks']}",
        f"messages={record['messages']}",
    ]
    if record["turn_id"] is not None:
        parts.append(f"turn_id={record['turn_id']}")
    retrieval = record["details"].get("retrieval")
    if retrieval is not None:
        hits = ",".join(f"{hit['id']}:{hit['score']}" for hit in retrieval["hits"]) or "none"
        parts.append(f"hits={hits} retrieval_ms={retrieval['ms']}")
    audio = record["details"].get("audio")
    if audio is not None:
        parts.append("clip=simulated" if audio["simulated"] else f"clip={audio['clip']}")
    parts.append(f"user={record['last_user_message']!r}")
    if record["error"]:
        parts.append(f"error={record['error']!r}")
    return " ".join(parts)


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
        self._finished = 0
        self._instance = secrets.token_hex(4)

    def begin(self, request_id: str, endpoint: str) -> RequestRecord:
        self.in_flight += 1
        return RequestRecord(request_id=request_id, endpoint=endpoint)

    def bounded(self, value: dict[str, Any], limit: int = 4096) -> dict[str, Any]:
        """`value` as it is if its JSON is small, else a truncated JSON text: records stay small in memory."""
        if not value:
            return value  # most requests: nothing to measure
        text = json.dumps(value, ensure_ascii=False, default=str)
        return value if len(text) <= limit else {"truncated": text[:limit] + "…"}

    def truncate(self, text: str) -> str:
        return text if len(text) <= self.text_chars else text[: self.text_chars - 1] + "…"

    def finish(self, record: RequestRecord) -> None:
        self.in_flight -= 1
        record.total_ms = record.elapsed_ms()
        self._finished += 1
        record.key = f"{self._instance}-{self._finished}"
        self.totals[record.outcome] += 1
        data = record.to_dict()
        self._records.append(data)
        if logger.isEnabledFor(logging.INFO):
            logger.info("%s", describe(data))
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
