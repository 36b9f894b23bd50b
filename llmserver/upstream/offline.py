"""The offline responder: a built-in upstream for a machine with no key and no network.

It streams a short deterministic reply word by word, in exactly the chunk format of a real upstream, under the
model name the request asked for. Offered the built-in tools, it calls them for questions that need them ("what
time is it in Tokyo?"), streaming the call in fragments as models do, and answers from their results, so the
server's tool loop works on a fresh machine with no key. Like a real model it answers from what its prompt holds:
given knowledge passages (the RAG endpoint's system message), it quotes the first, naming its title — or, as the
RAG template asks of a model, says so when they do not cover the question (they share none of its words).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..knowledge.context import ContextPassage, parse_passages
from ..knowledge.lexical import tokenize
from ..protocol.chat_request import include_usage, last_user_text, message_text, tool_names
from ..protocol.chunks import ChunkFactory, usage
from ..protocol.sse import dumps
from ..tools.builtin import CURRENT_TIME, SEARCH_KNOWLEDGE_BASE, find_time_zone
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
    from_tools = _answer_from_tools(messages)
    if from_tools is not None:
        return from_tools
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


_TIME_QUESTION = re.compile(r"\b(what time|the time|time is it|what's the time|clock)\b", re.IGNORECASE)
_PLACE = re.compile(r"\bin ([A-Za-z][A-Za-z _/-]*?)\s*(?:right now|now|today)?\s*[?.!]*$", re.IGNORECASE)
_LOOK_UP = re.compile(r"\b(look (it )?up|search|knowledge base)\b", re.IGNORECASE)


@dataclass(frozen=True)
class PlannedCall:
    """A tool call the offline responder decides to make, with the words it says first."""

    name: str
    arguments: dict[str, Any]
    preface: str


def plan_tool_call(body: dict[str, Any]) -> PlannedCall | None:
    """A call to a built-in tool, when one is offered and the last turn is a question it answers."""
    messages = body.get("messages") or []
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
        return None
    question = message_text(messages[-1]).strip()
    offered = tool_names(body.get("tools"))
    if CURRENT_TIME in offered and _TIME_QUESTION.search(question):
        place = _PLACE.search(question)
        zone = (find_time_zone(place.group(1)) or place.group(1)) if place else "UTC"
        return PlannedCall(CURRENT_TIME, {"timezone": zone}, "Let me check the time. ")
    if SEARCH_KNOWLEDGE_BASE in offered and _LOOK_UP.search(question):
        return PlannedCall(SEARCH_KNOWLEDGE_BASE, {"query": question}, "Let me look that up. ")
    return None


def _answer_from_tools(messages: list[Any]) -> str | None:
    """When the turn ends in tool results: what they say, as a model would put it."""
    results = []
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "tool":
            break
        results.insert(0, message_text(message))
    if not results:
        return None
    sentences = []
    for result in results:
        try:
            data = json.loads(result)
        except ValueError:
            data = None
        if isinstance(data, dict) and "error" in data:
            sentences.append(f"The tool could not help: {data['error']}.")
        elif isinstance(data, dict) and "spoken" in data:
            sentences.append(f"It is {data['spoken']} in {data.get('timezone', 'that time zone')}.")
        elif isinstance(data, dict) and isinstance(data.get("passages"), list) and data["passages"]:
            best = data["passages"][0]
            sentences.append(
                f'The knowledge base says, in "{best.get("title")}": {_shorten(str(best.get("text")), _QUOTE_CHARS)}'
            )
        elif isinstance(data, dict) and "passages" in data:
            sentences.append("The knowledge base has nothing on that.")
        else:
            sentences.append(f"The tool answered: {_shorten(result, 200)}")
    return " ".join(sentences)


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
    has_own_key = True  # it needs none

    def __init__(self, word_delay: float = 0.0) -> None:
        self.word_delay = word_delay

    async def stream(self, body: dict[str, Any], api_key: str | None) -> AsyncIterator[UpstreamChunk]:
        factory = ChunkFactory(_model(body))
        planned = plan_tool_call(body)
        if planned is not None:
            async for chunk in self._stream_call(factory, planned, body):
                yield chunk
            return
        words = _words(compose_reply(body))
        yield _chunk(factory.chunk({"role": "assistant", "content": "", "refusal": None}))
        for word in words:
            if self.word_delay:
                await asyncio.sleep(self.word_delay)
            yield _chunk(factory.chunk({"content": word}))
        yield _chunk(factory.chunk({}, finish_reason="stop"))
        if include_usage(body):
            yield _chunk(factory.usage_chunk(usage(_prompt_tokens(body), len(words))))

    async def _stream_call(
        self, factory: ChunkFactory, planned: PlannedCall, body: dict[str, Any]
    ) -> AsyncIterator[UpstreamChunk]:
        """The words first, then the call, its arguments in fragments, as models stream them."""
        yield _chunk(factory.chunk({"role": "assistant", "content": planned.preface, "refusal": None}))
        call_id = "call_" + secrets.token_hex(8)
        head = {"index": 0, "id": call_id, "type": "function", "function": {"name": planned.name, "arguments": ""}}
        yield _chunk(factory.chunk({"tool_calls": [head]}))
        arguments = json.dumps(planned.arguments)
        for start in range(0, len(arguments), 8):
            if self.word_delay:
                await asyncio.sleep(self.word_delay)
            piece = {"index": 0, "function": {"arguments": arguments[start : start + 8]}}
            yield _chunk(factory.chunk({"tool_calls": [piece]}))
        yield _chunk(factory.chunk({}, finish_reason="tool_calls"))
        if include_usage(body):
            yield _chunk(factory.usage_chunk(usage(_prompt_tokens(body), 8)))

    async def complete(self, body: dict[str, Any], api_key: str | None) -> dict[str, Any]:
        factory = ChunkFactory(_model(body))
        planned = plan_tool_call(body)
        if planned is not None:
            call = {
                "id": "call_" + secrets.token_hex(8),
                "type": "function",
                "function": {"name": planned.name, "arguments": json.dumps(planned.arguments)},
            }
            message = {"role": "assistant", "content": planned.preface, "refusal": None, "tool_calls": [call]}
            return factory.completion(message, usage(_prompt_tokens(body), 8), finish_reason="tool_calls")
        reply = compose_reply(body)
        message = {"role": "assistant", "content": reply, "refusal": None}
        return factory.completion(message, usage(_prompt_tokens(body), len(_words(reply))))

    async def list_models(self, api_key: str | None) -> dict[str, Any]:
        model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "custom-llm-server"}
        return {"object": "list", "data": [model]}

    async def aclose(self) -> None:
        return None
