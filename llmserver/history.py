"""The durable request history: every finished record in SQLite in the data directory, kept up to HISTORY_RECORDS
records and HISTORY_DAYS days, paged back through and filtered by endpoint, outcome, time and text.

Records are written by a background thread in batches, so the event loop never waits on the disk; a record that
cannot be queued (the writer far behind) or written (a full disk) is counted as dropped. Several workers may share
one file: a record's key is unique, and the same record written twice is written once.

The history is a log, never a reason not to serve: a damaged file is set aside and a new one started, and a file
that cannot be opened at all (a full disk, a folder that cannot be written) turns the history off (HistoryOff):
requests are served, their records are not kept, and /readyz says so.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from .files import open_database, open_or_set_aside
from .protocol.errors import ServiceError
from .request_log import safe_text

logger = logging.getLogger("llmserver.history")

QUEUE_LIMIT = 10_000
BATCH = 2000
FLUSH_SECONDS = 1.0
PAGE_LIMIT = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    endpoint TEXT NOT NULL,
    outcome TEXT NOT NULL,
    search TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_time ON requests (started_at);
CREATE INDEX IF NOT EXISTS requests_by_endpoint ON requests (endpoint, started_at);
CREATE INDEX IF NOT EXISTS requests_by_outcome ON requests (outcome, started_at);
"""


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """What a page of history shows of a record (the whole record is one more request away)."""
    keys = ("key", "request_id", "instance", "started_at", "endpoint", "model", "status", "outcome", "first_chunk_ms",
            "first_sentence_ms", "total_ms", "chunks", "last_user_message", "error", "passes", "upstream", "hedged",
            "platform")  # fmt: skip
    return {key: record.get(key) for key in keys}


def _search_text(record: dict[str, Any]) -> str:
    parts = [record.get("last_user_message") or "", record.get("reply") or "", record.get("error") or ""]
    parts += [record.get("request_id") or "", record.get("model") or "", record.get("upstream") or ""]
    return "\n".join(str(part) for part in parts).lower()


def open_history(
    path: str, *, max_records: int, max_days: float, on_drop: Callable[[int], None] | None = None
) -> RequestHistory | HistoryOff:
    """The history in `path`, or HistoryOff (logged) when that file cannot be opened. `on_drop(n)` hears of records
    that could not be kept."""
    try:
        return open_or_set_aside(
            path,
            lambda: RequestHistory(path, max_records=max_records, max_days=max_days, on_drop=on_drop),
            "the request history",
        )
    except (sqlite3.Error, OSError) as exc:
        logger.warning("request history off: %s cannot be opened (%s); requests are served but not kept", path, exc)
        return HistoryOff(path, str(exc), on_drop)


class RequestHistory:
    def __init__(
        self,
        path: str,
        *,
        max_records: int = 100_000,
        max_days: float = 30.0,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self.max_records = max_records
        self.max_days = max_days
        self.dropped = 0
        self.available = True  # False while writes fail (a full disk): /readyz shows it
        self._on_drop = on_drop
        # Records, flush markers (an Event set once what came before is written) and None (stop). A deque, not a
        # queue.Queue: adding a record must not wake the writer (a thread switch per request, and the GIL handed
        # back and forth, cost the streams a fifth of their throughput); the writer wakes every FLUSH_SECONDS, or
        # at once for a flush or the stop.
        self._queue: collections.deque[dict[str, Any] | threading.Event | None] = collections.deque()
        self._wake = threading.Event()
        # Both connections opened here: a file that cannot be opened stops the constructor, not the writer thread.
        self._read = self._connect()
        try:
            writing = self._connect()
        except sqlite3.Error:
            self._read.close()
            raise
        self._read_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_loop, args=(writing,), name="history", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        connection = open_database(self.path)
        try:
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
        except sqlite3.Error:
            connection.close()
            raise
        return connection

    def add(self, record: dict[str, Any]) -> None:
        """Queues a finished record for writing; never blocks."""
        if len(self._queue) >= QUEUE_LIMIT:
            self._dropped(1)
        else:
            self._queue.append(record)

    def _dropped(self, count: int) -> None:
        self.dropped += count
        if self._on_drop is not None:
            self._on_drop(count)

    def _signal(self, item: threading.Event | None) -> None:
        self._queue.append(item)
        self._wake.set()

    def _write_loop(self, connection: sqlite3.Connection) -> None:
        stored = self._count(connection)  # kept in step with the writes, so the cap costs no count per batch
        next_age_trim = 0.0
        stop = False
        while not stop:
            if not self._queue:
                self._wake.wait(FLUSH_SECONDS)
                self._wake.clear()
            items = []
            while self._queue and len(items) < BATCH:
                items.append(self._queue.popleft())
            batch = [item for item in items if isinstance(item, dict)]
            if batch:
                try:
                    stored += self._write(connection, batch)
                except Exception as exc:  # a full disk, a locked file, a record that cannot be stored: never fatal
                    with contextlib.suppress(sqlite3.Error):
                        connection.execute("ROLLBACK")
                    self._dropped(len(batch))
                    if self.available:  # once per spell of failures, not once a second
                        logger.warning("request history: records not written (%r); counted as dropped", exc)
                    self.available = False
                else:
                    if not self.available:
                        logger.info("request history: records written again (%d dropped so far)", self.dropped)
                    self.available = True
            # The limits hold at any time, not now and then: past HISTORY_RECORDS after each write, past
            # HISTORY_DAYS after each write too (a record may arrive old) and every minute on a quiet server.
            if batch or time.monotonic() >= next_age_trim:
                stored = self._trim(connection, stored)
                next_age_trim = time.monotonic() + 60
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()  # a flush() waiting for what came before it
            stop = any(item is None for item in items)
        connection.close()

    @staticmethod
    def _count(connection: sqlite3.Connection) -> int:
        return connection.execute("SELECT count(*) FROM requests").fetchone()[0]

    @staticmethod
    def _write(connection: sqlite3.Connection, batch: list[dict[str, Any]]) -> int:
        """Stores the batch; returns how many records were added (a record already stored is not added again)."""
        # The whole batch goes to SQLite as one JSON array, inserted by one statement: executemany would release
        # and retake the GIL once per row, and every retake makes the event loop (and its streams) wait.
        # ASCII JSON: whatever a record holds (even text that is not valid Unicode) is stored and read back.
        rows = json.dumps(
            [
                [r["key"], r["started_at"], r["endpoint"], r["outcome"], safe_text(_search_text(r)), json.dumps(r)]
                for r in batch
            ]
        )
        connection.execute("BEGIN")
        added = connection.execute(
            "INSERT OR IGNORE INTO requests SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5 "
            "FROM json_each(?)",
            [rows],
        ).rowcount
        connection.execute("COMMIT")
        return added

    def _trim(self, connection: sqlite3.Connection, stored: int) -> int:
        """Removes records past the age limit and the oldest past the count limit; returns how many are left."""
        try:
            cutoff = time.time() - self.max_days * 86400
            stored -= connection.execute("DELETE FROM requests WHERE started_at < ?", [cutoff]).rowcount
            if stored > self.max_records:
                # The oldest few, from the old end of the time index: the cost follows the excess, not the size.
                stored -= connection.execute(
                    "DELETE FROM requests WHERE key IN (SELECT key FROM requests ORDER BY started_at LIMIT ?)",
                    [stored - self.max_records],
                ).rowcount
        except sqlite3.Error as exc:
            logger.warning("request history: could not trim (%s)", exc)
        return stored

    def flush(self, timeout: float = 5.0) -> None:
        """Waits until what was queued so far is written (a blocking call: reads, tests, the end of the process)."""
        written = threading.Event()
        self._signal(written)
        written.wait(timeout)

    def page(
        self,
        *,
        before: float | None = None,
        limit: int = 50,
        endpoint: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        until: float | None = None,
        text: str | None = None,
    ) -> list[dict[str, Any]]:
        """At most `limit` records (the API bounds it by PAGE_LIMIT), newest first, older than `before` (a started_at
        from the previous page), filtered. Blocking (run it in a thread): what is queued is written first, so a
        request that has just ended is there."""
        self.flush()
        conditions, values = [], []
        for column, value in (("endpoint", endpoint), ("outcome", outcome)):
            if value:
                conditions.append(f"{column} = ?")
                values.append(value)
        if before is not None:
            conditions.append("started_at < ?")
            values.append(before)
        if since is not None:
            conditions.append("started_at >= ?")
            values.append(since)
        if until is not None:
            conditions.append("started_at <= ?")
            values.append(until)
        if text:
            conditions.append("instr(search, ?) > 0")
            values.append(text.lower())
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        query = f"SELECT record FROM requests {where} ORDER BY started_at DESC LIMIT ?"
        with self._read_lock:
            rows = self._read.execute(query, [*values, limit]).fetchall()
        return [summary(json.loads(row[0])) for row in rows]

    def get(self, key: str) -> dict[str, Any] | None:
        self.flush()
        with self._read_lock:
            row = self._read.execute("SELECT record FROM requests WHERE key = ?", [key]).fetchone()
        return json.loads(row[0]) if row else None

    def close(self) -> None:
        self._signal(None)
        self._writer.join(10)
        with self._read_lock:
            self._read.close()


class HistoryOff:
    """Stands in for the history when its file cannot be opened: nothing is kept (every record counted as dropped),
    and reading it is refused with the reason."""

    available = False

    def __init__(self, path: str, reason: str, on_drop: Callable[[int], None] | None = None) -> None:
        self.path = path
        self.reason = reason
        self.dropped = 0
        self._on_drop = on_drop

    def add(self, record: dict[str, Any]) -> None:
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop(1)

    def _refused(self) -> ServiceError:
        return ServiceError(
            f"The request history is off: {self.path} could not be opened at start ({self.reason}).",
            status=503,
            code="history_off",
        )

    def page(self, **_: Any) -> list[dict[str, Any]]:
        raise self._refused()

    def get(self, key: str) -> dict[str, Any] | None:
        raise self._refused()

    def flush(self, timeout: float = 5.0) -> None:
        pass

    def close(self) -> None:
        pass
