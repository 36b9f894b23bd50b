"""A raw HTTP/1.1 client: requests built byte by byte (however malformed) and sent in pieces on a new connection,
responses read back as they come (100 Continue, chunked, to the end of the connection), every way a connection can
end named rather than raised."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"
READ_LIMIT = 1 << 24  # the StreamReader's line limit: response heads are never near it


class ClosedEarly(Exception):
    """The connection closed before a whole response arrived."""


class BadResponse(Exception):
    """Bytes that are not an HTTP response."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header's values joined with ", "
    body: bytes
    head: bytes

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


async def read_response(reader: asyncio.StreamReader, method: str) -> Response:
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise ClosedEarly(exc.partial[:200]) from None
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise BadResponse(head[:200])
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if 100 <= status < 200 and status != 101:
            continue  # 100 Continue: the real answer follows
        break
    try:
        if method == "HEAD" or status in (101, 204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _read_chunked(reader)
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read()  # to the end of the connection
    except asyncio.IncompleteReadError as exc:
        raise ClosedEarly(head[:200] + b" ... " + exc.partial[-200:]) from None
    return Response(status, headers, body, head)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


@dataclass
class Exchange:
    responses: list[Response] = field(default_factory=list)
    error: str | None = None  # refused, reset, timeout, closed, bad-response
    detail: str = ""
    write_error: str | None = None


async def exchange(
    port: int,
    pieces: list[tuple[bytes, float]],
    methods: list[str],
    *,
    timeout: float = 15.0,
    linger: float = 0.0,
    until_close: bool = False,
) -> Exchange:
    """Sends `pieces` (bytes, then a pause) on a new connection while reading one response per entry of
    `methods`. With no methods, no response is awaited: after sending, whatever comes within `linger` seconds is
    read (partial requests, abandoned bodies). With `until_close`, responses are read until the server closes."""
    result = Exchange()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port, limit=READ_LIMIT), timeout)
    except OSError as exc:
        result.error, result.detail = "refused", repr(exc)
        return result
    except TimeoutError:
        result.error = "timeout"
        return result

    async def send() -> None:
        try:
            for data, pause in pieces:
                for start in range(0, len(data), 1 << 20):
                    writer.write(data[start : start + (1 << 20)])
                    await writer.drain()
                if pause:
                    await asyncio.sleep(pause)
        except (ConnectionError, OSError) as exc:
            result.write_error = type(exc).__name__

    sending = asyncio.ensure_future(send())
    try:
        async with asyncio.timeout(timeout):
            for method in methods:
                response = await read_response(reader, method)
                result.responses.append(response)
                if response.closes:
                    break  # the server said it closes: the rest of a pipeline goes unanswered, as announced
            else:
                if until_close and methods:
                    await _read_more(reader, result, idle=1.0)
            if linger or not methods:
                await sending
                if linger:
                    await _read_more(reader, result, idle=linger)
    except TimeoutError:
        result.error = "timeout"
    except ConnectionError as exc:
        result.error, result.detail = "reset", repr(exc)
    except ClosedEarly as exc:
        result.error, result.detail = "closed", repr(exc.args[0]) if exc.args else ""
    except BadResponse as exc:
        result.error, result.detail = "bad-response", repr(exc.args[0])
    except (ValueError, asyncio.LimitOverrunError) as exc:
        result.error, result.detail = "bad-response", repr(exc)
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return result


async def _read_more(reader: asyncio.StreamReader, result: Exchange, idle: float) -> None:
    """Reads whatever responses still come, until the server closes or is silent for `idle` seconds; the answers
    awaited have come already, so how the connection ends here is no error."""
    with contextlib.suppress(TimeoutError, ClosedEarly, BadResponse, ConnectionError, ValueError):
        while True:
            async with asyncio.timeout(idle):
                result.responses.append(await read_response(reader, "GET"))


Header = tuple[str | bytes, str | bytes]
JSON: Header = ("Content-Type", "application/json")


def as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def build_request(
    method: str | bytes,
    target: str | bytes,
    headers: list[Header],
    body: bytes = b"",
    *,
    length: str | bytes | None = "auto",
    version: str | bytes = "HTTP/1.1",
    eol: bytes = b"\r\n",
) -> bytes:
    """One request as bytes. `length` "auto" adds the body's Content-Length (when there is a body or the method
    carries one); None adds none; anything else is sent as the header's value."""
    lines = [as_bytes(method) + b" " + as_bytes(target) + b" " + as_bytes(version)]
    lines += [as_bytes(name) + b": " + as_bytes(value) for name, value in headers]
    if length == "auto":
        if body or as_bytes(method) in (b"POST", b"PUT", b"PATCH"):
            lines.append(b"Content-Length: %d" % len(body))
    elif length is not None:
        lines.append(b"Content-Length: " + as_bytes(length))
    return eol.join(lines) + eol + eol + body


def multipart(fields: list[tuple[str, bytes, str | None, str | None]]) -> tuple[str, bytes]:
    """(content type, body) of a form: each field is (name, value, filename or None, content type or None)."""
    boundary = "----fuzzboundary" + hashlib.sha256(repr(fields).encode()).hexdigest()[:16]
    parts = []
    for name, value, filename, content_type in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        parts.append(head.encode() + b"\r\n" + value + b"\r\n")
    return f"multipart/form-data; boundary={boundary}", b"".join(parts) + f"--{boundary}--\r\n".encode()


def sse_payloads(body: bytes) -> list[bytes]:
    return [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]


async def call(
    port: int, method: str, target: str, headers: Iterable[Header] = (), body: bytes = b"", *, timeout: float = 15.0
) -> Exchange:
    """One well-formed request (with its Host header) and its response."""
    request = build_request(method, target, [("Host", f"{HOST}:{port}"), *headers], body)
    return await exchange(port, [(request, 0.0)], [method], timeout=timeout)


def status_of(result: Exchange) -> int | str:
    """The first response's status, or how the connection ended without one."""
    return result.responses[0].status if result.responses else (result.error or "closed")


class AdminClient:
    """Calls of the admin API with the admin token."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token

    async def call(self, method: str, path: str, body: bytes = b"", content_type: str = "application/json") -> Exchange:
        headers: list[Header] = [("Authorization", f"Bearer {self.token}")]
        if body:
            headers.append(("Content-Type", content_type))
        return await call(self.port, method, path, headers, body, timeout=30)

    async def json(self, path: str) -> Any:
        result = await self.call("GET", path)
        if result.error or result.responses[0].status != 200:
            raise RuntimeError(f"GET {path}: {result.error or result.responses[0].status} {result.detail}")
        return json.loads(result.responses[0].body)
