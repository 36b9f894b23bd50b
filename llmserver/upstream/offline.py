"""The offline responder: a built-in upstream for a machine with no key and no network.

It streams a short deterministic reply word by word, in exactly the chunk format of a real upstream, under the
model name the request asked for. Like a real model it answers from what its prompt holds: given knowledge
passages (the RAG endpoint's system message), it quotes the first, naming its title — or, as the RAG template asks
of a model, says so when they do not cover the question (they share none of its words).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ..knowledge.context import ContextPassage, parse_passages
from ..knowledge.lexical import tokenize
from ..protocol.chat_request import include_usage, last_user_text, message_text
from ..protocol.chunks import ChunkFactory, usage
from ..protocol.sse import dumps
from .protocol import UpstreamChunk

MODEL = "offline"
_QUOTE_CHARS = 400


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _passages_in(messages: list[Any]) -> list[ContextPassage]:
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "system":
            passages = parse_passages(message_text(message))
            if passages:
                return passages
    return []


def compose_reply(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    passages = _passages_in(messages)
    asked = last_user_text(messages).strip()
    if passages:
        best = passages[0]
        if set(tokenize(asked)).isdisjoint(tokenize(f"{best.title} {best.text}")):
            return (
                f"The knowledge base does not say that exactly; the closest it has is "
                f'"{best.title or best.source}": {_shorten(best.text, _QUOTE_CHARS)}'
            )
        return f'From the knowledge base, "{best.title or best.source}": {_shorten(best.text, _QUOTE_CHARS)}'
    question = _shorten(asked, 200) or "nothing"
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


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    return model if isinstance(model, str) and model else MODEL


def _chunk(data: dict[str, Any]) -> UpstreamChunk:
    return UpstreamChunk(dumps(data), data)


class OfflineResponder:
    mode = "offline"
    base_url = None

    def __init__(self, word_delay: float = 0.0) -> None:
        self.word_delay = word_delay

    async def stream(self, body: dict[str, Any], api_key: str | None) -> AsyncIterator[UpstreamChunk]:
        factory = ChunkFactory(_model(body))
        words = _words(compose_reply(body))
        yield _chunk(factory.chunk({"role": "assistant", "content": "", "refusal": None}))
        for word in words:
            if self.word_delay:
                await asyncio.sleep(self.word_delay)
            yield _chunk(factory.chunk({"content": word}))
        yield _chunk(factory.chunk({}, finish_reason="stop"))
        if include_usage(body):
            yield _chunk(factory.usage_chunk(usage(_prompt_tokens(body), len(words))))

    async def complete(self, body: dict[str, Any], api_key: str | None) -> dict[str, Any]:
        factory = ChunkFactory(_model(body))
        reply = compose_reply(body)
        message = {"role": "assistant", "content": reply, "refusal": None}
        return factory.completion(message, usage(_prompt_tokens(body), len(_words(reply))))

    async def list_models(self, api_key: str | None) -> dict[str, Any]:
        model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "custom-llm-server"}
        return {"object": "list", "data": [model]}

    async def aclose(self) -> None:
        return None
