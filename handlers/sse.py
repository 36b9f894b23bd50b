"""The one writer of a completion's answer: Server-Sent Events sent as they are ready, or one JSON completion. It
counts what it sends, once, for the request's trace (its record): nothing else counts chunks.

Events are flushed once per turn of the event loop: the chunks an upstream's single network read holds arrived
together and go out together, in one write, instead of one system call each; none waits longer than the turn in
which it was written, and the response's first bytes go out at once."""

from __future__ import annotations

import asyncio
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
        self.may_start = False  # the relay sees its own sink (SpokenAnswer) for this
        self._flush_due: asyncio.Handle | None = None  # the flush at the end of this turn of the loop
        self._flushed: asyncio.Future | None = None  # the last flush, until its bytes are with the kernel

    def _start(self) -> None:
        handler = self._handler
        handler.set_header("Content-Type", "text/event-stream; charset=utf-8")
        handler.set_header("Cache-Control", "no-cache")
        handler.set_header("X-Accel-Buffering", "no")
        self.started = True

    async def _write(self, data: bytes, events: int) -> None:
        first = not self.started
        if first:
            self._start()
        handler = self._handler
        handler.write(data)
        if events:
            self._counter.sent(events)
        if first:
            self._flush()  # the response's first bytes (the time to first chunk) never wait for the rest
        elif self._flush_due is None:
            self._flush_due = asyncio.get_running_loop().call_soon(self._flush)
        # Wait only when the socket is full (a slow reader): otherwise the bytes are already with the kernel, and
        # waiting for Tornado's callback would cost an event-loop turn per chunk. A client that leaves is noticed
        # by on_connection_close either way.
        if self._flushed is not None and handler.request.connection.stream.writing():
            await self._flushed

    def _flush(self) -> None:
        self._flush_due = None
        if self._handler._finished:  # finish() sent everything
            return
        try:
            self._flushed = self._handler.flush()
        except StreamClosedError:
            return
        self._flushed.add_done_callback(_retrieved)

    def flush_now(self) -> None:
        """What is written goes out now (before the response ends, or the handler leaves)."""
        if self._flush_due is not None:
            self._flush_due.cancel()
            self._flush()

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
            self.flush_now()

    async def pause(self) -> None:
        self.flush_now()

    async def done(self) -> None:
        await self._write(DONE, 0)
        self.flush_now()

    def send_completion(self, completion: dict[str, Any]) -> None:
        """The whole answer as one JSON completion (`stream: false`)."""
        handler = self._handler
        handler.set_header("Content-Type", "application/json")
        self._counter.sent()
        handler.finish(json.dumps(completion, ensure_ascii=False))


def _retrieved(flushed: asyncio.Future) -> None:
    """A flush that failed (the client left) is noticed by on_connection_close; its error is not logged as lost."""
    if not flushed.cancelled():
        flushed.exception()
