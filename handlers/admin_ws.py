"""WebSocket /admin/ws/logs: the request log, live. On connect the latest records (up to 200), then each new one.

Each socket has a bounded queue: a slow or stuck browser never slows the server; when its queue is full, records
are dropped and the page is told how many it missed.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import tornado.web
import tornado.websocket

from llmserver.errors import ApiError

from .admin_access import AdminAccess
from .base import ApiHandler, RequestIdMixin

RECENT_ON_CONNECT = 200
QUEUE_LIMIT = 500


def _origin_host(origin: str) -> str | None:
    try:
        return urlsplit(origin).netloc.lower()
    except ValueError:
        return None  # unparseable: not this page's origin


class LiveLogSocket(AdminAccess, RequestIdMixin, tornado.websocket.WebSocketHandler):
    def prepare(self) -> None:
        # Checked here, not in check_origin, so that a refusal is a JSON error like the rest of the admin API.
        origin = self.request.headers.get("Origin")
        if origin is not None and _origin_host(origin) != self.request.host.lower():
            raise ApiError(403, "Cross-origin WebSocket connections are refused.", code="foreign_origin")
        if self.current_user is None:
            raise ApiError(401, "Admin token required (cookie or 'Authorization: Bearer <token>').", code="admin_token")

    def check_origin(self, origin: str) -> bool:
        return True  # prepare() has checked it

    # Refusals look and log like the rest of the admin API's.
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        ApiHandler.write_error(self, status_code, **kwargs)  # type: ignore[arg-type]

    def log_exception(self, typ, value, tb) -> None:
        if not isinstance(value, ApiError):  # a refusal is expected; anything else is logged as usual
            tornado.web.RequestHandler.log_exception(self, typ, value, tb)

    def open(self) -> None:
        self._queue: deque[dict[str, Any]] = deque()
        self._missed = 0
        self._wakeup = asyncio.Event()
        self._log = self.settings["services"].request_log
        for record in self._log.recent(RECENT_ON_CONNECT):
            self._queue.append(record)
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
                    if self._missed:
                        missed, self._missed = self._missed, 0
                        await self.write_message(json.dumps({"type": "missed", "count": missed}))
                    if self._queue:
                        record = self._queue.popleft()
                        await self.write_message(json.dumps({"type": "record", "record": record}, ensure_ascii=False))
        except (tornado.websocket.WebSocketClosedError, asyncio.CancelledError):
            self._stop()

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
