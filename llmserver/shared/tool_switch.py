"""Which server tools are switched off (the dashboard's switch, PUT /admin/api/tools/{name}), the same in every
process: the names in a Redis set, each change made and announced in one script. A process reads the set when it
starts, re-reads it on every announcement, after Redis comes back and every few seconds (so an announcement missed
costs no more than the shared state's periodic re-read)."""

from __future__ import annotations

from typing import Any

from ..tools.registry import ToolRegistry
from .redis_state import REDIS_ERRORS, SharedState

# KEYS: the set of switched-off names. ARGV: name, "1" to switch it on (else off), channel, event.
SWITCH = """
if ARGV[2] == '1' then redis.call('SREM', KEYS[1], ARGV[1]) else redis.call('SADD', KEYS[1], ARGV[1]) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""


class SharedToolSwitch:
    def __init__(self, state: SharedState, tools: ToolRegistry) -> None:
        self.state = state
        self.tools = tools
        self.key = state.key("tools:disabled")
        self._switch = state.sync.register_script(SWITCH)
        state.on("tools", self._announced, self._reread)

    def load(self) -> None:
        """Reads the switched-off names (at start-up, before serving)."""
        self.tools.disabled = self._names(self.state.sync.smembers(self.key))

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Switches `name` on or off for every process (SharedStoreUnavailable, changing nothing, while Redis is
        unreachable). Blocking: run it in a worker thread."""
        event = self.state.event("tools", name=name, enabled=enabled)
        try:
            self._switch(keys=[self.key], args=[name, "1" if enabled else "0", self.state.channel, event])
        except REDIS_ERRORS:
            raise self.state.unavailable() from None
        # A new set, swapped in whole: requests being answered read one or the other, never one half-changed.
        disabled = self.tools.disabled
        self.tools.disabled = disabled - {name} if enabled else disabled | {name}

    async def _announced(self, _: dict[str, Any]) -> None:
        await self._reread()  # the whole set, not the one change: announcements that crossed cannot reorder it

    async def _reread(self) -> None:
        self.tools.disabled = self._names(await self.state.aio.smembers(self.key))

    @staticmethod
    def _names(members: Any) -> set[str]:
        return {member.decode() if isinstance(member, bytes) else str(member) for member in members}
