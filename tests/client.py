"""Test-side HTTP helpers: JSON posts and SSE streams read with Tornado's HTTP client, and a raw socket client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPResponse


@dataclass
class StreamResult:
    response: HTTPResponse
    raw: bytes
    events: list[Any] = field(default_factory=list)  # parsed JSON payloads, "[DONE]" kept as the string

    @property
    def chunks(self) -> list[dict]:
        return [e for e in self.events if isinstance(e, dict)]

    @property
    def text(self) -> str:
        return "".join(
            (c["choices"][0]["delta"].get("content") or "")
            for c in self.chunks
            if c.get("choices") and "error" not in c
        )


def parse_sse(raw: bytes) -> list[Any]:
    events = []
    for block in raw.decode().split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def post(base_url: str, path: str, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None):
    client = AsyncHTTPClient()
    payload = raw if raw is not None else json.dumps(body).encode()
    return await client.fetch(
        base_url + path,
        method="POST",
        body=payload,
        headers={"Content-Type": "application/json", **(headers or {})},
        raise_error=False,
        request_timeout=30,
    )


async def stream(base_url: str, path: str, body: dict, headers: dict[str, str] | None = None) -> StreamResult:
    response = await post(base_url, path, {**body, "stream": True}, headers)
    return StreamResult(response, response.body, parse_sse(response.body) if response.code == 200 else [])


def json_of(response: HTTPResponse) -> Any:
    return json.loads(response.body)


class RawClient:
    """A bare HTTP/1.1 client on a socket, so a test can leave in the middle of a response."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host = "127.0.0.1"
        self.port = parts.port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, path: str, body: dict, headers: dict[str, str] | None = None, withhold: int = 0) -> None:
        """Sends the request; with `withhold`, all but that many bytes of its body (send_rest sends them)."""
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        data = json.dumps(body).encode()
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Content-Type: application/json"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        lines.append(f"Content-Length: {len(data)}")
        cut = len(data) - withhold
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data[:cut])
        self._rest = data[cut:]
        await self.writer.drain()

    async def send_rest(self) -> None:
        assert self.writer is not None
        self.writer.write(self._rest)
        await self.writer.drain()

    async def read_until(self, marker: bytes) -> bytes:
        assert self.reader is not None
        return await self.reader.readuntil(marker)

    async def read_some(self) -> bytes:
        assert self.reader is not None
        return await self.reader.read(65536)

    def close(self) -> None:
        assert self.writer is not None
        self.writer.close()


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0, what: str = "") -> float:
    """Waits until `check()` holds (polling); returns the seconds it took. Fails after `timeout`."""
    start = time.monotonic()
    while True:
        outcome = check()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if outcome:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)
