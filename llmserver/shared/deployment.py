"""What one process shares with the others of its deployment through Redis, wired to its services: built at
start-up by the composition root when REDIS_URL is set."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..admin_secrets import AdminSecrets
from ..audio.library import AudioLibrary
from ..knowledge.store import KnowledgeBase
from ..request_log import RequestLog
from ..tools.memory import ConversationMemory
from ..tools.registry import ToolRegistry
from .audio_store import RedisClipStore
from .knowledge_store import RedisKnowledgeStorage
from .log_stream import SharedRequestLog
from .memory_sync import SharedMemory
from .redis_state import REDIS_ERRORS, SharedState
from .tool_switch import SharedToolSwitch

logger = logging.getLogger("llmserver.shared")


class SharedDeployment:
    def __init__(self, url: str, prefix: str, instance: str) -> None:
        self.state = SharedState(url, prefix, instance)
        self.log: SharedRequestLog | None = None
        self.memory: SharedMemory | None = None
        self.tool_switch: SharedToolSwitch | None = None

    def connect(self) -> None:
        """Raises ConnectionError (with Redis's reason) when Redis cannot be reached: the server does not start."""
        try:
            self.state.check()
        except REDIS_ERRORS as exc:
            raise ConnectionError(str(exc) or type(exc).__name__) from None

    @property
    def available(self) -> bool:
        return self.state.available

    @property
    def dropped(self) -> int:
        return self.log.dropped if self.log is not None else 0

    def admin_secrets(self, mine: AdminSecrets) -> AdminSecrets:
        """One admin token and cookie secret for every process: the first process's, kept in Redis (and put back
        by every process if Redis loses them, so that a process starting later still signs in alike)."""
        key = self.state.key("admin:secrets")
        mine_json = mine.to_json()
        self.state.sync.set(key, mine_json, nx=True)
        kept_json = self.state.sync.get(key)
        try:
            kept = AdminSecrets.from_json(kept_json)
        except (TypeError, ValueError) as exc:  # never a secret such as "None": this process's take their place
            logger.warning("the admin secrets in Redis (%s) cannot be used (%s); this process's are kept", key, exc)
            self.state.sync.set(key, mine_json)
            kept, kept_json = mine, mine_json

        async def restore() -> None:
            await self.state.aio.set(key, kept_json, nx=True)  # one command; nothing when they are there

        self.state.on(None, None, restore)  # nothing is announced about them
        return kept

    def knowledge_storage(self, max_document_chars: int) -> RedisKnowledgeStorage:
        return RedisKnowledgeStorage(self.state, max_document_chars)

    def clip_store(self) -> RedisClipStore:
        return RedisClipStore(self.state)

    def share(
        self,
        knowledge_base: KnowledgeBase,
        audio_library: AudioLibrary,
        memory: ConversationMemory,
        tools: ToolRegistry,
        request_log: RequestLog,
        on_drop: Callable[[int], None],
    ) -> None:
        """Applies the other processes' changes to these services, and passes theirs on."""

        async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
            # Reading from Redis and re-indexing take time: never on the event loop.
            return await asyncio.get_running_loop().run_in_executor(None, function, *args)

        async def knowledge_changed(event: dict[str, Any]) -> None:
            if event.get("everything") or not isinstance(event.get("version"), int):
                await in_thread(knowledge_base.refresh)
            else:
                await in_thread(
                    knowledge_base.apply_remote, event["version"], event.get("changed", []), event.get("deleted", [])
                )

        async def knowledge_resync() -> None:
            await in_thread(knowledge_base.refresh)

        async def audio_changed(_: dict[str, Any]) -> None:
            await in_thread(audio_library.refresh)

        self.state.on("knowledge", knowledge_changed, knowledge_resync)
        self.state.on("audio", audio_changed, lambda: in_thread(audio_library.refresh))
        self.memory = SharedMemory(self.state, memory)
        self.memory.load()
        self.tool_switch = SharedToolSwitch(self.state, tools)
        self.tool_switch.load()
        self.log = SharedRequestLog(self.state, request_log, on_drop)

    def start(self) -> None:
        """Starts listening and shipping (on the running event loop)."""
        self.state.start()
        if self.memory is not None:
            self.memory.start()
        if self.log is not None:
            self.log.start()

    async def listening(self, timeout: float = 10.0) -> bool:
        """Waits until this process hears the others' announcements and has caught up with what changed before;
        a server starts serving only then. False if that did not happen within `timeout` seconds."""
        try:
            await asyncio.wait_for(self.state.listening.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Closes a deployment that was only checked, never started."""
        self.state.sync.close()

    async def aclose(self) -> None:
        await self.state.aclose()
