"""One live log for all processes: each appends its request records to a capped Redis stream and reads everyone
else's, which its request log then hands to its dashboards and its history as if they were its own (each record
names the instance that served it)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from ..request_log import RequestLog
from .redis_state import REDIS_ERRORS, RETRY_PAUSES, SharedState, Shipper

logger = logging.getLogger("llmserver.shared")
STREAM_LENGTH = 10_000  # records the stream keeps (approximately: Redis trims in whole blocks)
# A live log may lag by a tenth of a second: records are sent, and read, at most that often (and then in batches),
# so that shipping them costs the event loop little whatever the request rate.
BATCH_SECONDS = 0.1


class SharedRequestLog:
    def __init__(
        self, state: SharedState, request_log: RequestLog, on_drop: Callable[[int], None] | None = None
    ) -> None:
        self.state = state
        self.request_log = request_log
        self.stream_key = state.key("log")
        self._instance = request_log.instance.encode()
        self.shipper = Shipper(state, self._send, linger=BATCH_SECONDS, on_drop=on_drop)
        request_log.watch_local(self.shipper.put)

    @property
    def dropped(self) -> int:
        return self.shipper.dropped

    def start(self) -> None:
        self.state.run(self.shipper.run())
        self.state.run(self._read())

    def _send(self, pipe: Any, records: list[dict[str, Any]]) -> None:
        for record in records:
            fields = {"instance": self.request_log.instance, "record": json.dumps(record, ensure_ascii=False)}
            pipe.xadd(self.stream_key, fields, maxlen=STREAM_LENGTH, approximate=True)

    async def _read(self) -> None:
        # From the newest record when this process starts; after an outage, from the last one read, so that what
        # the others shipped meanwhile (or right as Redis came back) is read too.
        last = None
        attempt = 0
        while True:
            try:
                if last is None:
                    newest = await self.state.aio.xrevrange(self.stream_key, count=1)
                    last = newest[0][0] if newest else "0-0"
                replies = await self.state.aio.xread({self.stream_key: last}, count=500, block=1000)
                attempt = 0
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS:
                if self.state.closing:
                    return
                await asyncio.sleep(RETRY_PAUSES[min(attempt, len(RETRY_PAUSES) - 1)])
                attempt += 1
                continue
            for _, entries in replies or ():
                for entry_id, fields in entries:
                    last = entry_id
                    self._publish(fields)
            if replies:
                await asyncio.sleep(BATCH_SECONDS)  # the next read then takes what arrived meanwhile, at once

    def _publish(self, fields: dict[bytes, bytes]) -> None:
        if fields.get(b"instance") == self._instance:
            return  # this process's own record: it has it already (not even parsed)
        try:
            record = json.loads(fields[b"record"])
        except (KeyError, ValueError):
            return
        if isinstance(record, dict) and record.get("key"):
            self.request_log.publish(record)
