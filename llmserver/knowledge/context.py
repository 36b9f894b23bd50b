"""What the RAG endpoint adds to a request: the waiting message first, then the chosen passages as one system
message, placed just before the user's last turn so that everything before it (the system messages, the history)
stays byte for byte what it was at the previous turn: the prefix upstreams cache (OpenAI caches prompt prefixes of
1,024 tokens and more). The passages' format is defined here, and read back here for the offline responder."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..protocol.chunks import ChunkFactory
from .passages import Passage

WAITING_MESSAGE_ID = "waiting_msg"
_HEADER = re.compile(r"^\[(\d+)\] (.*) \(([^()\s]+#\d+)\)$", re.MULTILINE)


@dataclass(frozen=True)
class ContextPassage:
    """A passage as the model reads it: where it comes from (document#passage), what it is called, its text."""

    source: str
    title: str
    text: str


def waiting_chunk(model: str, messages: Sequence[str]) -> dict[str, Any]:
    """The chunk sent before any retrieval, so the person on the call hears something at once. It ends in a space:
    clients that join the stream's text would otherwise run it into the answer ("...find out...From")."""
    message = random.choice(messages).rstrip() + " "
    return ChunkFactory(model, WAITING_MESSAGE_ID).chunk({"role": "assistant", "content": message})


def _label(passage: Passage) -> str:
    title = passage.title or passage.doc_id
    return f"{title} — {passage.heading}" if passage.heading and passage.heading != title else title


def format_passages(passages: Sequence[Passage]) -> str:
    return "\n\n".join(f"[{n}] {_label(p)} ({p.id})\n{p.text}" for n, p in enumerate(passages, 1))


def parse_passages(text: str) -> list[ContextPassage]:
    """The passages of a knowledge message made by format_passages (the offline responder reads its prompt)."""
    headers = list(_HEADER.finditer(text))
    ends = [following.start() for following in headers[1:]] + [len(text)]  # one more than headers when there are none
    return [
        ContextPassage(header.group(3), header.group(2), text[header.end() : end].strip())
        for header, end in zip(headers, ends, strict=False)
    ]


def augment(body: dict[str, Any], passages: Sequence[Passage], template: str) -> dict[str, Any]:
    """A copy of `body` with one system message holding the passages, just before the user's last turn (after the
    request's own system messages when that is all there is before it).

    The user's messages are not changed; with no passages the body is returned as it is.
    """
    if not passages:
        return body
    context = {"role": "system", "content": template.replace("{passages}", format_passages(passages))}
    messages = list(body["messages"])
    position = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages))
    messages.insert(position, context)
    return {**body, "messages": messages}
