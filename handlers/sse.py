"""The one SSE writer: sends events to the client as they are ready, flushing each. It only writes; the caller
keeps count of what was sent."""

from __future__ import annotations

import contextlib
from typing import Any

import tornado.web
from tornado.iostream import StreamClosedError

from llmserver.protocol.errors import ApiError
from llmserver.protocol.sse import DONE, encode_comment, encode_event, encode_json_event, encode_spliced_events


class EventStream:
    def __init__(self, handler: tornado.web.RequestHandler) -> None:
        self._handler = handler
        self.started = False

    def _start(self) -> None:
        handler = self._handler
        handler.set_header("Content-Type", "text/event-stream; charset=utf-8")
        handler.set_header("Cache-Control", "no-cache")
        handler.set_header("X-Accel-Buffering", "no")
        self.started = True

    async def _write(self, data: bytes) -> None:
        if not self.started:
            self._start()
        handler = self._handler
        handler.write(data)
        flushed = handler.flush()
        # Wait only when the socket is full (a slow reader): otherwise the bytes are already with the kernel, and
        # waiting for Tornado's callback would cost an event-loop turn per chunk. A client that leaves is noticed
        # by on_connection_close either way.
        if handler.request.connection.stream.writing():
            await flushed

    async def send(self, payload: bytes) -> None:
        """Sends one chunk: `payload` is its JSON, as bytes."""
        await self._write(encode_event(payload))

    async def send_json(self, chunk: Any) -> None:
        await self._write(encode_json_event(chunk))

    async def send_many(self, payloads: list[bytes]) -> None:
        """Sends several chunks that are all ready in one write."""
        if payloads:
            await self._write(b"".join([encode_event(payload) for payload in payloads]))

    async def send_spliced(self, head: bytes, parts: list[bytes], tail: bytes) -> None:
        """Sends one chunk `head + part + tail` per part, in one write (see sse.encode_spliced_events)."""
        if parts:
            await self._write(encode_spliced_events(head, parts, tail))

    async def send_comment(self, text: str) -> None:
        await self._write(encode_comment(text))

    async def send_error(self, error: ApiError) -> None:
        """After streaming has begun, an error is one `data: {"error": ...}` event, then [DONE]."""
        with contextlib.suppress(StreamClosedError):
            await self._write(encode_json_event(error.body()) + DONE)

    async def done(self) -> None:
        await self._write(DONE)
