"""Conversation memory across processes: each conversation's exchanges in a Redis list that expires with the
conversation (MEMORY_SECONDS), and every new exchange announced, so that whichever process serves the next turn
already holds it. A process reads the conversations still in Redis when it starts, and again each time it has
subscribed anew (after Redis or the network comes back): what was announced meanwhile reached no one here.
"""

from __future__ import annotations

import asyncio
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
        state.on("memory", self._apply, catch_up=self._catch_up)

    def load(self) -> int:
        """Reads the conversations Redis still holds, the most recent up to the memory's bound, and adds what this
        process lacks of them (each exchange once, however often it is called); returns how many were read.
        Blocking: at start-up, or in a worker thread."""
        keys = list(self.state.sync.scan_iter(match=self.key_prefix + "*", count=1000))
        if len(keys) > self.memory.max_conversations:
            keys = self._most_recent(keys, self.memory.max_conversations)
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
            self.memory.merge(conversation, exchanges)
        return len(loaded)

    def _most_recent(self, keys: list[bytes], count: int) -> list[bytes]:
        """The `count` keys whose last exchange is the most recent (by each list's last entry only)."""
        with self.state.sync.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.lindex(key, -1)
            last_entries = pipe.execute()
        changed = {}
        for key, entry in zip(keys, last_entries, strict=True):
            try:
                changed[key] = float(json.loads(entry)["at"]) if entry is not None else 0.0
            except (ValueError, KeyError, TypeError):
                changed[key] = 0.0
        return sorted(keys, key=changed.__getitem__, reverse=True)[:count]

    async def _catch_up(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.load)

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
        # Merged, not appended: an exchange made while this process was subscribing is both announced and in the
        # list its catch-up reads, and must be held once.
        self.memory.merge(conversation, [exchange])
