"""The offline responder: a built-in upstream for a machine with no key and no network.

It streams a short deterministic reply word by word, in exactly the chunk format of a real upstream. Given
retrieved passages (the RAG endpoint), it answers from the best one, naming its title.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .chat_request import message_text
from .chunks import ChunkFactory, usage
from .sse import dumps
from .upstream import Passage

MODEL = "offline"
_QUOTE_CHARS = 400


def _question(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message).strip()
    return ""


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def compose_reply(body: dict[str, Any], passages: Sequence[Passage] = ()) -> str:
    question = _shorten(_question(body), 200) or "nothing"
    if passages:
        best = passages[0]
        return f'From the knowledge base, "{best.title or best.id}": {_shorten(best.content, _QUOTE_CHARS)}'
    return (
        f'I am the offline responder of the Custom LLM Server; no upstream LLM is configured. You asked: "{question}". '
        "Set OPENAI_API_KEY or OPENAI_BASE_URL to get real answers."
    )


def _words(text: str) -> list[str]:
    """Splits into stream pieces that join back to the text: words with their following space."""
    pieces = text.split(" ")
    return [piece + " " for piece in pieces[:-1]] + [pieces[-1]]


def _prompt_tokens(body: dict[str, Any]) -> int:
    return sum(len(message_text(m).split()) for m in body.get("messages") or [] if isinstance(m, dict))


class OfflineResponder:
    mode = "offline"
    base_url = None

    def __init__(self, word_delay: float = 0.0) -> None:
        self.word_delay = word_delay

    async def stream(
        self, body: dict[str, Any], api_key: str | None, passages: Sequence[Passage] = (), retry: bool = True
    ) -> AsyncIterator[bytes]:
        factory = ChunkFactory(MODEL)
        words = _words(compose_reply(body, passages))
        yield dumps(factory.chunk({"role": "assistant", "content": "", "refusal": None}))
        for word in words:
            if self.word_delay:
                await asyncio.sleep(self.word_delay)
            yield dumps(factory.chunk({"content": word}))
        yield dumps(factory.chunk({}, finish_reason="stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            yield dumps(factory.usage_chunk(usage(_prompt_tokens(body), len(words))))

    async def complete(self, body: dict[str, Any], api_key: str | None, passages: Sequence[Passage] = ()) -> bytes:
        factory = ChunkFactory(MODEL)
        reply = compose_reply(body, passages)
        message = {"role": "assistant", "content": reply, "refusal": None}
        return dumps(factory.completion(message, usage(_prompt_tokens(body), len(_words(reply)))))

    async def list_models(self, api_key: str | None) -> bytes:
        model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "custom-llm-server"}
        return json.dumps({"object": "list", "data": [model]}).encode()

    async def aclose(self) -> None:
        return None
