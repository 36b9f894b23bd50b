"""HTTP webhook tools, declared by the operator in the tools file: the way voice platforms let operators connect
their own systems without writing code. A call sends the arguments (as the query string for GET and DELETE, as a
JSON body otherwise) and gives the model the response body."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp

from .registry import Tool, ToolFailure
from .tools_file import ToolsConfig, WebhookConfig

logger = logging.getLogger("llmserver.tools")


class WebhookTools:
    name = "webhooks"

    def __init__(self, config: ToolsConfig) -> None:
        self._session: aiohttp.ClientSession | None = None
        self.configure(config)

    def configure(self, config: ToolsConfig) -> None:
        self._webhooks = config.webhooks
        self._tools = [  # made once per tools file, not per request
            Tool(hook.name, hook.description, hook.parameters, "webhook", self._runner(hook), hook.timeout)
            for hook in self._webhooks
        ]

    def tools(self) -> list[Tool]:
        return list(self._tools)

    def state(self) -> dict[str, Any]:
        return {"source": "webhooks", "reachable": True, "tools": len(self._webhooks)}

    async def reload(self) -> None:
        return None  # the registry re-reads the file

    def _runner(self, hook: WebhookConfig):
        async def run(arguments: dict[str, Any]) -> str:
            return await self.call(hook, arguments)

        return run

    async def call(self, hook: WebhookConfig, arguments: dict[str, Any]) -> str:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        options: dict[str, Any] = {"headers": hook.headers}
        if hook.method in ("GET", "DELETE"):
            options["params"] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in arguments.items()}
        else:
            options["json"] = arguments
        try:
            # The registry bounds the call with the tool's timeout; cancelling it aborts the request.
            async with self._session.request(hook.method, hook.url, **options) as response:
                text = await response.text(errors="replace")
        except aiohttp.ClientError as exc:
            logger.warning("webhook tool %r could not be reached: %r", hook.name, exc)
            raise ToolFailure("the service behind this tool could not be reached") from None
        if response.status >= 400:
            raise ToolFailure(f"the service behind this tool answered HTTP {response.status}")
        return text

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
