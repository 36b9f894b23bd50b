"""The one writer of a completion's answer: Server-Sent Events sent as they are ready, each flushed, or one JSON
completion. It counts what it sends, once, for the request's trace (its record): nothing else counts chunks."""

from __future__ import annotations

import contextlib
import json
from typing import Any, Protocol

import tornado.web
from tornado.iostream import StreamClosedError

from llmserver.protocol.errors import ApiError
from llmserver.protocol.sse import DONE, dumps, encode_comment, encode_event, encode_json_event, encode_spliced_events


class SentCounter(Protocol):
    def sent(self, chunks: int = 1) -> None: ...


class EventStream:
    def __init__(self, handler: tornado.web.RequestHandler, counter: SentCounter) -> None:
        self._handler = handler
        self._counter = counter
        self.started = False

    def _start(self) -> None:
        handler = self._handler
        handler.set_header("Content-Type", "text/event-stream; charset=utf-8")
        handler.set_header("Cache-Control", "no-cache")
        handler.set_header("X-Accel-Buffering", "no")
        self.started = True

    async def _write(self, data: bytes, events: int) -> None:
        if not self.started:
            self._start()
        handler = self._handler
        handler.write(data)
        flushed = handler.flush()
        if events:
            self._counter.sent(events)
        # Wait only when the socket is full (a slow reader): otherwise the bytes are already with the kernel, and
        # waiting for Tornado's callback would cost an event-loop turn per chunk. A client that leaves is noticed
        # by on_connection_close either way.
        if handler.request.connection.stream.writing():
            await flushed

    async def send_chunk(self, data: dict[str, Any], raw: bytes | None = None) -> None:
        """Sends one chunk: `raw` is its JSON as the upstream wrote it, when it is relayed unchanged."""
        await self._write(encode_event(raw if raw is not None else dumps(data)), 1)

    async def send_json(self, chunk: Any) -> None:
        await self._write(encode_json_event(chunk), 1)

    async def send_many(self, payloads: list[bytes]) -> None:
        """Sends several chunks that are all ready in one write."""
        if payloads:
            await self._write(b"".join([encode_event(payload) for payload in payloads]), len(payloads))

    async def send_spliced(self, head: bytes, parts: list[bytes], tail: bytes) -> None:
        """Sends one chunk `head + part + tail` per part, in one write (see sse.encode_spliced_events)."""
        if parts:
            await self._write(encode_spliced_events(head, parts, tail), len(parts))

    async def send_comment(self, text: str) -> None:
        await self._write(encode_comment(text), 0)

    async def send_error(self, error: ApiError) -> None:
        """After streaming has begun, an error is one `data: {"error": ...}` event, then [DONE]."""
        with contextlib.suppress(StreamClosedError):
            await self._write(encode_json_event(error.body()) + DONE, 0)

    async def done(self) -> None:
        await self._write(DONE, 0)

    def send_completion(self, completion: dict[str, Any]) -> None:
        """The whole answer as one JSON completion (`stream: false`)."""
        handler = self._handler
        handler.set_header("Content-Type", "application/json")
        self._counter.sent()
        handler.finish(json.dumps(completion, ensure_ascii=False))
