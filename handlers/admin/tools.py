"""/admin/api/tools (the server's tools: list, switch, reload, try one) and /admin/api/conversations (the memory
of conversations' tool exchanges)."""

from __future__ import annotations

import json

from llmserver.protocol.errors import ApiError
from llmserver.tools.registry import ToolCall

from .base import ONE, AdminApiHandler


class ToolsHandler(AdminApiHandler):
    """GET /admin/api/tools: every tool with its source, schema and state, and each source's state."""

    def get(self) -> None:
        tools = self.services.tools
        self.write_json(
            {"tools": tools.describe(), "sources": tools.states(), "endpoints": list(self.config.server_tools)}
        )


class ToolsReloadHandler(AdminApiHandler):
    """POST /admin/api/tools/reload: the tools file read again, every MCP server asked for its tools again."""

    async def post(self) -> None:
        await self.services.reload_tools()
        tools = self.services.tools
        self.write_json({"tools": tools.describe(), "sources": tools.states()})


class ToolHandler(AdminApiHandler):
    """PUT /admin/api/tools/{name} with {"enabled": bool}: offer the tool, or not."""

    async def put(self, name: str) -> None:
        tools = self.services.tools
        if name not in tools.all_tools():
            raise ApiError(404, f"No tool named {name!r}.", param="name", code="not_found")
        enabled = self.json_object().get("enabled")
        if not isinstance(enabled, bool):
            raise ApiError(400, "'enabled' must be true or false.", param="enabled")
        await self.in_worker(self.services.set_tool_enabled, name, enabled)  # with Redis: every process
        self.write_json(next(tool for tool in tools.describe() if tool["name"] == name))


class ToolCallHandler(AdminApiHandler):
    """POST /admin/api/tools/{name}/call with {"arguments": {...}}: try the tool, as the model would call it."""

    async def post(self, name: str) -> None:
        tools = self.services.tools
        available = tools.all_tools()
        if name not in available:
            raise ApiError(404, f"No tool named {name!r}.", param="name", code="not_found")
        arguments = self.json_object().get("arguments", {})
        text = arguments if isinstance(arguments, str) else json.dumps(arguments)
        outcome = await tools.run_call(ToolCall("try-it", name, text), available)
        self.write_json(
            {"name": name, "ok": outcome.ok, "ms": outcome.ms, "result": outcome.content, "error": outcome.error}
        )


class ConversationsHandler(AdminApiHandler):
    """GET /admin/api/conversations: the conversations whose tool exchanges are remembered."""

    def get(self) -> None:
        limit = self.count_argument("limit", default=100, most=1000)
        conversations = self.services.memory.conversations()
        self.write_json({"conversations": conversations[:limit], "total": len(conversations)})


class ConversationHandler(AdminApiHandler):
    """GET or DELETE /admin/api/conversations/{key}: one conversation's remembered exchanges."""

    def get(self, key: str) -> None:
        exchanges = self.services.memory.get(key)
        if exchanges is None:
            raise ApiError(404, f"No conversation {key!r} is remembered.", param="key", code="not_found")
        self.write_json({"key": key, "exchanges": exchanges})

    def delete(self, key: str) -> None:
        if not self.services.memory.forget(key):
            raise ApiError(404, f"No conversation {key!r} is remembered.", param="key", code="not_found")
        self.set_status(204)
        self.finish()


default_handlers = [
    (r"/admin/api/tools", ToolsHandler),
    (r"/admin/api/tools/reload", ToolsReloadHandler),
    (rf"/admin/api/tools/{ONE}/call", ToolCallHandler),
    (rf"/admin/api/tools/{ONE}", ToolHandler),
    (r"/admin/api/conversations", ConversationsHandler),
    (rf"/admin/api/conversations/{ONE}", ConversationHandler),
]
