"""WebSocket /admin/ws/logs: the request log, live. On connect the latest records (up to 200), then each new one.

Each socket has a bounded queue: a slow or stuck browser never slows the server; when its queue is full, records
are dropped and the page is told how many it missed. The sender never dies silently: a record it cannot send is
logged and counted as missed, and any other failure closes the socket, so the page knows and reconnects.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import Any

import tornado.websocket

from llmserver.protocol.errors import ApiError

from ..auth import AdminAccess, is_same_origin
from ..base import JsonErrors

logger = logging.getLogger("llmserver.handlers")
RECENT_ON_CONNECT = 200
QUEUE_LIMIT = 500


def record_message(record: dict[str, Any]) -> str:
    """The record as the socket sends it; ValueError (or UnicodeEncodeError) when it cannot be encoded."""
    text = json.dumps({"type": "record", "record": record}, ensure_ascii=False)
    text.encode("utf-8")  # what the socket will do: fail here, where it can be handled, not in the sender
    return text


class LiveLogSocket(AdminAccess, JsonErrors, tornado.websocket.WebSocketHandler):
    def prepare(self) -> None:
        # Checked here, not in check_origin, so that a refusal is a JSON error like the rest of the admin API.
        origin = self.request.headers.get("Origin")
        if origin is not None and not is_same_origin(self.request, origin):
            raise ApiError(403, "Cross-origin WebSocket connections are refused.", code="foreign_origin")
        self.check_token_throttle()
        if self.current_user is None:
            raise ApiError(401, "Admin token required (cookie or 'Authorization: Bearer <token>').", code="admin_token")

    def check_origin(self, origin: str) -> bool:
        return True  # prepare() has checked it

    async def get(self, *args: Any, **kwargs: Any) -> None:
        connection = {part.strip().lower() for part in self.request.headers.get("Connection", "").split(",")}
        if self.request.headers.get("Upgrade", "").lower() != "websocket" or "upgrade" not in connection:
            raise ApiError(400, "This is a WebSocket: connect with 'Upgrade: websocket'.", code="websocket_required")
        await super().get(*args, **kwargs)

    def open(self) -> None:
        self._queue: deque[dict[str, Any]] = deque()
        self._missed = 0
        self._wakeup = asyncio.Event()
        self._log = self.services.request_log
        self._queue.extend(self._log.recent(RECENT_ON_CONNECT))
        self._log.subscribe(self.on_record)
        self._sender = asyncio.ensure_future(self._send_queued())
        self._wakeup.set()

    def on_record(self, record: dict[str, Any]) -> None:
        if len(self._queue) >= QUEUE_LIMIT:
            self._missed += 1
        else:
            self._queue.append(record)
        self._wakeup.set()

    async def _send_queued(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue or self._missed:
                    if self._queue:
                        record = self._queue.popleft()
                        try:
                            message = record_message(record)
                        except ValueError:
                            logger.warning("live log: record %s cannot be encoded; skipped", record.get("key"))
                            self._missed += 1
                            continue
                        await self.write_message(message)
                    if self._missed:
                        missed, self._missed = self._missed, 0
                        await self.write_message(json.dumps({"type": "missed", "count": missed}))
        except (tornado.websocket.WebSocketClosedError, asyncio.CancelledError):
            self._stop()
        except Exception:
            logger.exception("live log sender failed; closing the socket so the page reconnects")
            self._stop()
            self.close(1011, "internal error")

    def on_message(self, message: str | bytes) -> None:
        return None  # the page only listens

    def on_close(self) -> None:
        self._stop()

    def _stop(self) -> None:
        if hasattr(self, "_log"):
            self._log.unsubscribe(self.on_record)
        sender = getattr(self, "_sender", None)
        if sender is not None and not sender.done() and sender is not asyncio.current_task():
            sender.cancel()


default_handlers = [
    (r"/admin/ws/logs", LiveLogSocket),
]
