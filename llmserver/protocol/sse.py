"""Server-Sent Events encoding, in bytes: `data: <payload>\\n\\n` events, comments and the `[DONE]` sentinel."""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"


def encode_event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def encode_json_event(obj: Any) -> bytes:
    return encode_event(dumps(obj))


def encode_spliced_events(head: bytes, parts: list[bytes], tail: bytes) -> bytes:
    """One `data: head + part + tail` event per part, built in a single copy (audio chunks differ only in data)."""
    pieces = [b"data: " + head, b"", tail + b"\n\n"] * len(parts)
    pieces[1::3] = parts
    return b"".join(pieces)


def encode_comment(text: str) -> bytes:
    return b": " + text.encode() + b"\n\n"


def dumps(obj: Any) -> bytes:
    """Compact JSON, UTF-8 as is (no \\u escapes), as OpenAI sends it."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class SSELineReader:
    """Splits a byte stream into SSE `data:` payloads, whatever the network's chunk boundaries are.

    Comments, `event:`/`id:` fields and blank lines are skipped; multi-line data is not used by OpenAI-style
    servers, so each `data:` line is one payload.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer + data
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()
        payloads = []
        for line in lines:
            if line.startswith(b"data:"):
                payload = line[5:]
                if payload[:1] == b" ":
                    payload = payload[1:]
                payloads.append(payload.rstrip(b"\r"))
        return payloads

    def pending(self) -> bytes:
        return self._buffer
