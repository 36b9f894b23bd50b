"""A `stream: false` answer made from a stream: the chunks of every pass, collected into one `chat.completion` as
OpenAI would have answered it (the text joined, the tool calls assembled from their fragments, the usage)."""

from __future__ import annotations

from typing import Any

from ..protocol.chunks import SYSTEM_FINGERPRINT


class CompletionCollector:
    """A ChunkSink that keeps what a caller would have received, for a caller that asked for one JSON answer."""

    started = False  # nothing reaches the caller before the end: no keep-alive comments
    may_start = False

    def __init__(self) -> None:
        self._envelope: dict[str, Any] = {}
        self._text: list[str] = []
        self._refusal: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None

    async def send_chunk(self, data: dict[str, Any], raw: bytes | None = None) -> None:
        if not self._envelope:
            self._envelope = {key: data.get(key) for key in ("id", "created", "model", "system_fingerprint")}
        if isinstance(data.get("usage"), dict):
            self._usage = data["usage"]
        for choice in data.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            if isinstance(delta.get("content"), str):
                self._text.append(delta["content"])
            if isinstance(delta.get("refusal"), str):
                self._refusal.append(delta["refusal"])
            for part in delta.get("tool_calls") or ():
                self._add_call_fragment(part)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]

    def _add_call_fragment(self, part: dict[str, Any]) -> None:
        call = self._calls.setdefault(
            part.get("index", 0), {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if isinstance(part.get("id"), str):
            call["id"] = part["id"]
        function = part.get("function") if isinstance(part.get("function"), dict) else {}
        for key in ("name", "arguments"):
            if isinstance(function.get(key), str):
                call["function"][key] += function[key]

    async def send_comment(self, text: str) -> None:
        return None

    async def pause(self) -> None:
        return None

    async def done(self) -> None:
        return None

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self._text) or None,
            "refusal": "".join(self._refusal) or None,
        }
        if self._calls:
            message["tool_calls"] = [self._calls[index] for index in sorted(self._calls)]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self._finish_reason or "stop"}
        completion = {
            "id": self._envelope.get("id"),
            "object": "chat.completion",
            "created": self._envelope.get("created"),
            "model": self._envelope.get("model"),
            "system_fingerprint": self._envelope.get("system_fingerprint") or SYSTEM_FINGERPRINT,
            "choices": [choice],
        }
        if self._usage is not None:
            completion["usage"] = self._usage
        return completion
