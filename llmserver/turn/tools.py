"""Which of the server's tools a turn offers: none on an endpoint not in SERVER_TOOLS, with `tool_choice: "none"`
or with `n` above 1; else the enabled ones whose names the caller's own tools do not use."""

from __future__ import annotations

from collections.abc import Collection

from ..tools.registry import ToolRegistry
from ..upstream.tool_loop import ToolUse
from .model import ChatTurn


class ServerToolsStage:
    def __init__(self, registry: ToolRegistry, endpoints: Collection[str], max_passes: int) -> None:
        self.registry = registry
        self.endpoints = frozenset(endpoints)
        self.max_passes = max_passes

    async def __call__(self, turn: ChatTurn) -> None:
        body = turn.chat.body
        if turn.endpoint.name not in self.endpoints or body.get("tool_choice") == "none":
            return
        if body.get("n") not in (None, 1):
            return
        offered = self.registry.offered(body.get("tools") or [])
        if offered:
            turn.tools = ToolUse(offered, self.registry, self.max_passes, turn.exchanged, turn.language)
