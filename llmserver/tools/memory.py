"""The memory of a conversation's tool exchanges.

The engine's history carries the user's and the assistant's words, not the server's tool calls and results, so on
the next turn the model would have forgotten what a tool said ("what was that temperature again?"). Each exchange
(the assistant's tool calls and the results) is kept per conversation with the user turn that led to it, and
spliced back into the next request right after that turn — never twice, and never when the caller's history
already holds those calls. A conversation is keyed by the engine's `context` (appId, userId, channel), else by the
OpenAI `user` field, else by the X-Conversation-Id header; without any of them nothing is kept.

Keys are chosen by callers, so a key says unambiguously which parts it was made of (JSON, so "a:b" + "c" is not
"a" + "b:c"), a long one is hashed (a megabyte `user` costs a few dozen bytes), and each is scoped by the credential
the caller presented: a caller who sends another caller's `user` or `context` with another key reaches nothing of
theirs.

Bounded by conversations (least recently used first out), messages per conversation (oldest exchanges first out)
and age.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..protocol.chat_request import message_text


@dataclass(frozen=True)
class Exchange:
    after_user: str  # the text of the user turn that led to it
    turn_id: Any  # the engine's turn id of that turn, when it sent one
    messages: tuple[dict[str, Any], ...]  # the assistant's tool calls, then one tool message per call
    at: float = field(default_factory=time.time)

    def call_ids(self) -> set[str]:
        return call_ids(self.messages)

    def identity(self) -> tuple[float, str, tuple[str, ...]]:
        """What tells one exchange from another, the same whichever process holds a copy."""
        return self.at, self.after_user, tuple(sorted(self.call_ids()))

    def to_dict(self) -> dict[str, Any]:
        return {"after_user": self.after_user, "turn_id": self.turn_id, "at": self.at, "messages": list(self.messages)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Exchange:
        """An exchange as to_dict wrote it (another process's, through the shared store)."""
        messages = data["messages"]
        if not isinstance(data["after_user"], str) or not isinstance(messages, list):
            raise ValueError("not an exchange")
        if not all(isinstance(message, dict) for message in messages):
            raise ValueError("not an exchange")
        return cls(data["after_user"], data.get("turn_id"), tuple(messages), float(data.get("at", time.time())))


@dataclass
class _Conversation:
    exchanges: list[Exchange] = field(default_factory=list)
    used: float = field(default_factory=time.time)

    def message_count(self) -> int:
        return sum(len(exchange.messages) for exchange in self.exchanges)


MAX_KEY_CHARS = 96  # longer identities are hashed
TURN_TEXT_CHARS = 500  # of the user turn an exchange followed; a longer one is kept as its digest


def _digest(text: str, length: int = 32) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def credential_scope(credential: str | None) -> str:
    """The part of a key that says whose it is: a digest of the API key the caller presented, or "anon"."""
    return f"key-{_digest(credential, 16)}" if credential else "anon"


def conversation_key(
    platform: tuple[str, list[str]] | None, user: Any, header: str | None, credential: str | None = None
) -> str | None:
    """The memory's key for a request, or None when it names no conversation: the voice platform's own id of the
    conversation (`platform`: its name and the id's parts), else `user`, else the X-Conversation-Id header; scoped
    by the credential the caller presented."""
    identity: tuple[str, list[str]] | None = None
    if platform is not None and platform[1]:
        identity = platform
    if identity is None and isinstance(user, str) and user:
        identity = ("user", [user])
    if identity is None and header:
        identity = ("header", [header])
    if identity is None:
        return None
    kind, parts = identity
    named = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    if len(named) > MAX_KEY_CHARS or not named.isprintable():
        named = "sha256:" + _digest(named)
    return f"{credential_scope(credential)}:{kind}:{named}"


def call_ids(messages: Sequence[dict[str, Any]]) -> set[str]:
    """The ids of the tool calls and tool results in `messages` (whatever else a caller's history holds)."""
    ids = set()
    for message in messages:
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict) and isinstance(call.get("id"), str):
                ids.add(call["id"])
        if message.get("role") == "tool" and isinstance(message.get("tool_call_id"), str):
            ids.add(message["tool_call_id"])
    return ids


def bounded_turn_id(turn_id: Any) -> Any:
    """The engine's turn id as an exchange keeps it: a number or a short text (anything else names no turn)."""
    if isinstance(turn_id, bool):
        return None
    if isinstance(turn_id, int) or (isinstance(turn_id, str) and len(turn_id) <= 64):
        return turn_id
    return None


def turn_text(message_or_text: dict[str, Any] | str) -> str:
    """The text of a user turn as an exchange remembers it (bounded: a long one by its digest)."""
    text = (message_or_text if isinstance(message_or_text, str) else message_text(message_or_text)).strip()
    return text if len(text) <= TURN_TEXT_CHARS else "sha256:" + _digest(text)


class ConversationMemory:
    def __init__(self, conversations: int = 1000, messages: int = 40, max_age: float = 3600.0) -> None:
        self.max_conversations = conversations
        self.max_messages = messages
        self.max_age = max_age
        self._conversations: OrderedDict[str, _Conversation] = OrderedDict()
        self._lock = threading.Lock()
        self._on_remember: Callable[[str, Exchange], None] | None = None
        self._on_forget: Callable[[str], None] | None = None

    def watch(self, remembered: Callable[[str, Exchange], None], forgotten: Callable[[str], None]) -> None:
        """Hears what this process remembers and forgets (the shared store passes it on to the others)."""
        self._on_remember, self._on_forget = remembered, forgotten

    def remember(self, key: str, exchange: Exchange, *, announce: bool = True) -> None:
        """Keeps `exchange`; `announce=False` for another process's, which that process announced."""
        if announce and self._on_remember is not None:
            self._on_remember(key, exchange)
        with self._lock:
            self._expire()
            conversation = self._conversations.pop(key, None) or _Conversation()
            conversation.exchanges.append(exchange)
            self._keep(key, conversation)

    def merge(self, key: str, exchanges: Sequence[Exchange]) -> None:
        """Adds those of `exchanges` (a conversation as another process left it in the shared store) that this
        process does not hold, in time order, each once: catching up with what was announced while this process
        could not hear it."""
        with self._lock:
            self._expire()
            conversation = self._conversations.get(key)
            held = {exchange.identity() for exchange in conversation.exchanges} if conversation else set()
            new = [exchange for exchange in exchanges if exchange.identity() not in held]
            if not new:
                return
            conversation = self._conversations.pop(key, None) or _Conversation()
            conversation.exchanges = sorted([*conversation.exchanges, *new], key=lambda exchange: exchange.at)
            self._keep(key, conversation)

    def _keep(self, key: str, conversation: _Conversation) -> None:
        """Puts a conversation just used back as the most recent, within the bounds (with the lock held)."""
        conversation.used = time.time()
        while conversation.message_count() > self.max_messages and len(conversation.exchanges) > 1:
            conversation.exchanges.pop(0)
        self._conversations[key] = conversation
        while len(self._conversations) > self.max_conversations:
            self._conversations.popitem(last=False)

    def splice(self, key: str, messages: list[dict[str, Any]], turn_ids: Sequence[Any]) -> list[dict[str, Any]]:
        """`messages` with the conversation's exchanges put back after the user turns that led to them.
        `turn_ids` are the engine's per-message turn ids (None where it sent none)."""
        with self._lock:
            self._expire()
            conversation = self._conversations.get(key)
            if conversation is None:
                return messages
            self._conversations.move_to_end(key)
            conversation.used = time.time()
            exchanges = list(conversation.exchanges)
        present = call_ids(messages)
        inserts: dict[int, list[dict[str, Any]]] = {}
        for exchange in exchanges:
            if exchange.call_ids() & present:
                continue  # the caller sent these already
            position = _user_turn(messages, turn_ids, exchange)
            if position is None:
                continue  # that turn is no longer in the history the caller sends
            inserts.setdefault(position, []).extend(exchange.messages)
        if not inserts:
            return messages
        spliced: list[dict[str, Any]] = []
        for index, message in enumerate(messages):
            spliced.append(message)
            spliced.extend(inserts.get(index, []))
        return spliced

    def conversations(self) -> list[dict[str, Any]]:
        with self._lock:
            self._expire()
            return [
                {"key": key, "exchanges": len(c.exchanges), "messages": c.message_count(), "used": round(c.used, 3)}
                for key, c in reversed(self._conversations.items())
            ]

    def get(self, key: str) -> list[dict[str, Any]] | None:
        with self._lock:
            conversation = self._conversations.get(key)
            return None if conversation is None else [exchange.to_dict() for exchange in conversation.exchanges]

    def forget(self, key: str, *, announce: bool = True) -> bool:
        if announce and self._on_forget is not None:
            self._on_forget(key)
        with self._lock:
            return self._conversations.pop(key, None) is not None

    def _expire(self) -> None:
        # The conversations are in the order of their use (each use moves one to the end): the expired are first.
        oldest = time.time() - self.max_age
        while self._conversations and next(iter(self._conversations.values())).used < oldest:
            self._conversations.popitem(last=False)


def _user_turn(messages: Sequence[dict[str, Any]], turn_ids: Sequence[Any], exchange: Exchange) -> int | None:
    """The index of the user turn an exchange followed: by the engine's turn id, else by its words (the latest)."""
    if exchange.turn_id is not None:
        for index, message in enumerate(messages):
            if message.get("role") == "user" and index < len(turn_ids) and turn_ids[index] == exchange.turn_id:
                return index
    # By its words, the latest such turn; never a user turn that ends the history (the new question: nothing has
    # been exchanged after it yet, whatever an earlier turn with the same words led to).
    last = len(messages) - 1 if messages and messages[-1].get("role") == "user" else len(messages)
    for index in range(last - 1, -1, -1):
        message = messages[index]
        if message.get("role") == "user" and turn_text(message) == exchange.after_user:
            return index
    return None
