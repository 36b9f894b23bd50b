"""HTTP webhook tools, declared by the operator in the tools file: the way voice platforms let operators connect
their own systems without writing code. A call sends the arguments (as the query string for GET and DELETE, as a
JSON body otherwise) and gives the model the response body — only as much of it as the result's cap can use: the
body is streamed (decompressed as it comes) and the rest never read, so a large or inflating body costs nothing."""

from __future__ import annotations

import codecs
import json
import logging
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .registry import Tool, ToolFailure
from .tools_file import ToolsConfig, WebhookConfig

logger = logging.getLogger("llmserver.tools")


class WebhookTools:
    name = "webhooks"

    def __init__(self, config: ToolsConfig, *, result_chars: int = 4000) -> None:
        self._session: aiohttp.ClientSession | None = None
        # A character is at most 4 bytes: this many bytes hold more than the registry keeps, so a cut body is always
        # marked as cut there.
        self.body_bytes = 4 * (result_chars + 1)
        self.configure(config)

    def configure(self, config: ToolsConfig) -> None:
        self._webhooks = config.webhooks
        self._tools = [  # made once per tools file, not per request
            Tool(hook.name, hook.description, hook.parameters, "webhook", self._runner(hook), hook.timeout, hook.filler)
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
                if response.status >= 400:
                    raise ToolFailure(f"the service behind this tool answered HTTP {response.status}")
                return await self._read_text(response)
        except aiohttp.ClientError as exc:
            # The type and where only: the error's repr carries its request, the tool's secret headers included.
            reason = type(exc).__name__
            logger.warning("webhook tool %r could not be reached: %s (%s)", hook.name, reason, _where(hook.url))
            raise ToolFailure("the service behind this tool could not be reached") from None

    async def _read_text(self, response: aiohttp.ClientResponse) -> str:
        """The body's first `body_bytes`, decoded; the rest is not read (leaving the block closes the connection).
        Content-Length is not trusted either way: the count is of the bytes as they arrive, decompressed."""
        limit = self.body_bytes
        body = bytearray()
        while len(body) < limit:
            chunk = await response.content.read(limit - len(body))
            if not chunk:
                break
            body += chunk
        try:
            decoder = codecs.getincrementaldecoder(response.charset or "utf-8")(errors="replace")
        except LookupError:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # Not final: a character cut at the limit is dropped rather than shown as garbage.
        return decoder.decode(bytes(body), final=len(body) < limit)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _where(url: str) -> str:
    """The URL without what may be secret in it (`${NAME}` can put a key in its query or user info)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"
