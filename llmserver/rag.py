"""Retrieval-augmented generation: the waiting message, and the retrieved passages put into the request."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

from .chunks import SYSTEM_FINGERPRINT
from .knowledge import SearchHit

WAITING_MESSAGE_ID = "waiting_msg"


def waiting_chunk(model: str, messages: Sequence[str]) -> dict[str, Any]:
    """The chunk sent before any retrieval, so the person on the call hears something at once."""
    return {
        "id": WAITING_MESSAGE_ID,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": random.choice(messages)},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }


def format_passages(hits: Sequence[SearchHit]) -> str:
    return "\n\n".join(f"[{n}] {hit.title or hit.id}\n{hit.content}" for n, hit in enumerate(hits, 1))


def augment(body: dict[str, Any], hits: Sequence[SearchHit], template: str) -> dict[str, Any]:
    """A copy of `body` with one system message holding the passages, after the request's own system messages.

    The user's messages are not changed; with no hits the body is returned as it is.
    """
    if not hits:
        return body
    context = {"role": "system", "content": template.replace("{passages}", format_passages(hits))}
    messages = list(body["messages"])
    position = 0
    while position < len(messages) and messages[position].get("role") in ("system", "developer"):
        position += 1
    messages.insert(position, context)
    return {**body, "messages": messages}
