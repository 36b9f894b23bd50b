"""Where a turn's answer goes in tests that run the turn without HTTP: a sink that keeps every chunk, comment and
[DONE] in order, as the SSE writer would have sent them."""

from __future__ import annotations

import json
from typing import Any


class RecordingSink:
    def __init__(self, started: bool = False) -> None:
        self.started = started  # True: as after /rag's waiting message (keep-alive comments then allowed)
        self.may_start = False
        self.events: list[Any] = []  # chunk dicts, ("comment", text), "[DONE]"
        self.raw: list[bytes | None] = []  # the bytes relayed as they came, None where the chunk was rewritten

    async def send_chunk(self, data: dict[str, Any], raw: bytes | None = None) -> None:
        self.started = True
        self.events.append(data)
        self.raw.append(raw)

    async def send_many(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            await self.send_chunk(json.loads(payload), payload)

    async def send_spliced(self, head: bytes, parts: list[bytes], tail: bytes) -> None:
        await self.send_many([head + part + tail for part in parts])

    async def send_comment(self, text: str) -> None:
        self.events.append(("comment", text))

    async def pause(self) -> None:
        self.events.append("pause")

    async def done(self) -> None:
        self.events.append("[DONE]")

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [event for event in self.events if isinstance(event, dict)]

    @property
    def text(self) -> str:
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in self.chunks if c.get("choices"))
