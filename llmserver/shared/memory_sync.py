"""Conversation memory across processes: each conversation's exchanges in a Redis list that expires with the
conversation (MEMORY_SECONDS), and every new exchange announced, so that whichever process serves the next turn
already holds it. A process that starts reads the conversations still in Redis."""

from __future__ import annotations

import json
import logging
from typing import Any

from ..tools.memory import ConversationMemory, Exchange
from .redis_state import SharedState, Shipper

logger = logging.getLogger("llmserver.shared")


class SharedMemory:
    def __init__(self, state: SharedState, memory: ConversationMemory) -> None:
        self.state = state
        self.memory = memory
        self.key_prefix = state.key("memory:")
        self.shipper = Shipper(state, self._send)
        memory.watch(self._remembered, self._forgotten)
        state.on("memory", self._apply)

    def load(self) -> int:
        """Reads the conversations Redis still holds (at start-up); returns how many."""
        keys = [key for key in self.state.sync.scan_iter(match=self.key_prefix + "*", count=1000)]
        keys = keys[: self.memory.max_conversations]
        with self.state.sync.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.lrange(key, 0, -1)
            lists = pipe.execute()
        loaded = []
        for key, entries in zip(keys, lists, strict=True):
            try:
                exchanges = [Exchange.from_dict(json.loads(entry)) for entry in entries]
            except (ValueError, KeyError, TypeError):
                logger.warning("shared store: conversation memory %r is not valid and is left out", key)
                continue
            if exchanges:
                loaded.append((exchanges[-1].at, key.decode()[len(self.key_prefix) :], exchanges))
        for _, conversation, exchanges in sorted(loaded):  # the most recent last: kept first when over the limit
            for exchange in exchanges:
                self.memory.remember(conversation, exchange, announce=False)
        return len(loaded)

    def start(self) -> None:
        self.state.run(self.shipper.run())

    def _remembered(self, conversation: str, exchange: Exchange) -> None:
        self.shipper.put((conversation, exchange.to_dict()))

    def _forgotten(self, conversation: str) -> None:
        self.shipper.put((conversation, None))

    def _send(self, pipe: Any, batch: list[tuple[str, dict[str, Any] | None]]) -> None:
        for conversation, exchange in batch:
            key = self.key_prefix + conversation
            if exchange is None:
                pipe.delete(key)
                pipe.publish(self.state.channel, self.state.event("memory", conversation=conversation, forget=True))
                continue
            pipe.rpush(key, json.dumps(exchange, ensure_ascii=False))
            pipe.ltrim(key, -self.memory.max_messages, -1)  # each exchange holds two messages or more
            pipe.expire(key, max(1, int(self.memory.max_age)))
            pipe.publish(self.state.channel, self.state.event("memory", conversation=conversation, exchange=exchange))

    async def _apply(self, event: dict[str, Any]) -> None:
        conversation = event.get("conversation")
        if not isinstance(conversation, str):
            return
        if event.get("forget"):
            self.memory.forget(conversation, announce=False)
            return
        try:
            exchange = Exchange.from_dict(event["exchange"])
        except (ValueError, KeyError, TypeError):
            return
        self.memory.remember(conversation, exchange, announce=False)
