"""A turn as the stages see it: the request, who asked, where the answer goes, and what the stages decide."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Protocol

from ..audio.responder import ClipSink
from ..endpoints import Endpoint
from ..protocol.chat_request import ChatRequest
from ..protocol.language import language_of
from ..tools.registry import ToolOutcome
from ..upstream.relay import ChunkSink
from ..upstream.tool_loop import ToolUse
from .trace import TurnTrace

ExchangeListener = Callable[[list[dict[str, Any]], list[ToolOutcome]], None]


class AnswerSink(ChunkSink, ClipSink, Protocol):
    """Where an answer goes: chunks (and the audio endpoint's spliced clip chunks), comments, [DONE]."""


@dataclass
class Repairs:
    """What the history's repair changed (llmserver.turn.history); all zero: the history went as it came."""

    results_added: int = 0  # for tool calls left without one
    results_moved: int = 0  # a result that came after the caller's next words, moved up to its call
    empty_calls_removed: int = 0  # `tool_calls: []`, which OpenAI refuses
    results_dropped: int = 0  # answering no call
    empty_turns_dropped: int = 0
    turns_joined: int = 0
    interrupted_marked: int = 0

    def changed(self) -> dict[str, int]:
        return {name: count for name, count in asdict(self).items() if count}


@dataclass(frozen=True)
class Caller:
    """Who is asking, as the HTTP layer established it."""

    upstream_key: str | None = None  # the key to call the upstream with (None: the server's own)
    credential: str | None = None  # the bearer token presented, which scopes the conversation's memory
    conversation_header: str | None = None  # X-Conversation-Id


@dataclass
class ChatTurn:
    chat: ChatRequest
    endpoint: Endpoint
    caller: Caller
    sink: ChunkSink
    trace: TurnTrace
    body: dict[str, Any] = field(default_factory=dict)  # what goes upstream; the stages change it
    conversation: str | None = None  # the memory's key
    tools: ToolUse | None = None  # the server's tools offered, if any
    exchange_listeners: list[ExchangeListener] = field(default_factory=list)
    repairs: Repairs = field(default_factory=Repairs)
    on_end: list[Callable[[], None]] = field(default_factory=list)  # run when the answer ends, however it ends
    late_start: bool = False  # a late waiting message may begin the response while the model is awaited
    tasks: set[asyncio.Task] = field(default_factory=set)  # started by a stage; cancelled when the answer ends

    def __post_init__(self) -> None:
        if not self.body:
            self.body = self.chat.body

    @cached_property
    def language(self) -> str:
        """The caller's language, from its last message (the waiting message and the tools' fillers use it)."""
        return language_of(self.chat.last_user_text())

    @property
    def last_user_index(self) -> int | None:
        return max((i for i, m in enumerate(self.chat.messages) if m.get("role") == "user"), default=None)

    @property
    def opens_user_turn(self) -> bool:
        """The request asks something new (its last message is the user's); not a caller returning with results."""
        return self.chat.messages[-1].get("role") == "user"

    def background(self, task: asyncio.Task) -> None:
        """Keeps `task` until it is done; it is cancelled if the answer ends first."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def end(self) -> None:
        for callback in self.on_end:
            callback()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks))

    def exchanged(self, messages: list[dict[str, Any]], outcomes: list[ToolOutcome]) -> None:
        for listener in self.exchange_listeners:
            listener(messages, outcomes)


class Stage(Protocol):
    """One step of preparing a turn: reads and changes the turn (its body, its tools), may send to its sink."""

    async def __call__(self, turn: ChatTurn) -> None: ...
