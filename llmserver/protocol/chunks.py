"""Builders for OpenAI's `chat.completion.chunk` and `chat.completion` objects, for replies the server makes itself."""

from __future__ import annotations

import secrets
import time
from typing import Any

SYSTEM_FINGERPRINT = "fp_custom_llm_server"


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


class ChunkFactory:
    """Makes the chunks of one response: the same id, created and model on each, as OpenAI does."""

    def __init__(self, model: str, completion_id: str | None = None) -> None:
        self.id = completion_id or new_completion_id()
        self.created = int(time.time())
        self.model = model

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self._envelope("chat.completion.chunk"), "choices": [choice]}

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self._envelope("chat.completion.chunk"), "choices": [], "usage": usage}

    def completion(self, message: dict[str, Any], usage: dict[str, int], finish_reason: str = "stop") -> dict[str, Any]:
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        return {**self._envelope("chat.completion"), "choices": [choice], "usage": usage}


def completion_as_chunks(completion: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """A `chat.completion` as the chunks a streaming upstream would have sent (for upstreams that ignore
    `stream: true` and answer with JSON)."""
    factory = ChunkFactory(str(completion.get("model", "")), str(completion.get("id") or new_completion_id()))
    if isinstance(completion.get("created"), int):
        factory.created = completion["created"]
    chunks = []
    for choice in completion.get("choices") or []:
        message = dict(choice.get("message") or {})
        delta = {"role": message.pop("role", "assistant"), **message}
        if isinstance(delta.get("tool_calls"), list):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(delta["tool_calls"])]
        first = factory.chunk(delta)
        first["choices"][0]["index"] = choice.get("index", 0)
        last = factory.chunk({}, finish_reason=choice.get("finish_reason") or "stop")
        last["choices"][0]["index"] = choice.get("index", 0)
        chunks += [first, last]
    if include_usage and isinstance(completion.get("usage"), dict):
        chunks.append(factory.usage_chunk(completion["usage"]))
    return chunks


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
