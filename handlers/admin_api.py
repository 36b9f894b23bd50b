"""The admin JSON API that the dashboard uses (and scripts can, with `Authorization: Bearer <admin token>`)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

import tornado.httputil
import tornado.ioloop

from llmserver.history import PAGE_LIMIT
from llmserver.knowledge.query import RetrievalQuery, conversation_query, single_query
from llmserver.protocol.errors import ApiError
from llmserver.protocol.json_body import parse_json
from llmserver.tools.registry import ToolCall

from .auth import AdminAccess
from .base import ApiHandler

T = TypeVar("T")
ADMIN_JSON_BYTES = 64 * 1024 * 1024  # a whole knowledge.json can be imported
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
MAX_SHOWN_PASSAGES = 10_000  # the retrieval test's `k`; the candidates are far fewer anyway


class AdminApiHandler(AdminAccess, ApiHandler):
    def body_limit(self) -> int:
        return max(ADMIN_JSON_BYTES, self.config.max_body_bytes)

    def prepare(self) -> None:
        # Before the body is read: a caller without the token is turned away without sending it.
        self.check_token_throttle()
        if self.current_user is None:
            raise ApiError(401, "Admin token required (cookie or 'Authorization: Bearer <token>').", code="admin_token")
        super().prepare()

    async def in_worker(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs a change in a worker thread (re-indexing, decoding audio) so that streams keep flowing."""
        loop = tornado.ioloop.IOLoop.current()
        try:
            return await loop.run_in_executor(None, lambda: function(*args, **kwargs))
        except OSError as exc:
            raise ApiError(500, f"Could not save the change: {exc.strerror}.", type="server_error") from None


class KnowledgeCollectionHandler(AdminApiHandler):
    def get(self) -> None:
        knowledge = self.services.knowledge_base
        self.write_json({"version": knowledge.version, "documents": knowledge.list()})

    async def post(self) -> None:
        document = _document_fields(self.json_object())
        self.write_json(await self.in_worker(self.services.knowledge_base.add, document), status=201)


class KnowledgeDocumentHandler(AdminApiHandler):
    def get(self, doc_id: str) -> None:
        self.write_json(self.services.knowledge_base.get(doc_id))

    async def put(self, doc_id: str) -> None:
        body = self.json_object()
        read_version = body.get("version")
        if not isinstance(read_version, int) or isinstance(read_version, bool):
            raise ApiError(
                400,
                "'version' is required: the knowledge base version the document was read at (GET gives it), "
                "so that a save never overwrites someone else's newer edit.",
                param="version",
            )
        document = _document_fields(body)
        self.write_json(await self.in_worker(self.services.knowledge_base.update, doc_id, document, read_version))

    async def delete(self, doc_id: str) -> None:
        await self.in_worker(self.services.knowledge_base.delete, doc_id)
        self.set_status(204)
        self.finish()


def _document_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The document itself, without what the API adds around it."""
    return {k: v for k, v in body.items() if k not in ("version", "changed_at_version")}


class KnowledgePassagesHandler(AdminApiHandler):
    """GET /admin/api/knowledge/{id}/passages: the passages the document is indexed as."""

    def get(self, doc_id: str) -> None:
        self.services.knowledge_base.get(doc_id)  # 404 for an unknown document
        passages = self.services.retriever.passages_of(doc_id)
        self.write_json({"id": doc_id, "passages": [passage.to_dict() for passage in passages]})


class RetrievalTestHandler(AdminApiHandler):
    """What the RAG endpoint would inject: for a question (GET ?q=...), or for a conversation (POST {"messages"}),
    with every candidate's scores and why it was or was not injected; `?k=` shows only the best k candidates."""

    async def get(self) -> None:
        await self._answer(single_query(self.get_query_argument("q", "")))

    async def post(self) -> None:
        body = self.json_object()
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list, as in a chat request.", param="messages")
        await self._answer(conversation_query(messages))

    def _shown_count(self) -> int | None:
        value = self.get_query_argument("k", "")
        if not value:
            return None
        # The length first: int() refuses (ValueError) a text of thousands of digits.
        if not (value.isascii() and value.isdigit() and len(value) <= 5 and 1 <= int(value) <= MAX_SHOWN_PASSAGES):
            raise ApiError(400, f"'k' must be a whole number of passages from 1 to {MAX_SHOWN_PASSAGES}.", param="k")
        return int(value)

    async def _answer(self, query: RetrievalQuery) -> None:
        shown = self._shown_count()  # checked before the work
        result = await self.services.retriever.retrieve(query)
        self.write_json(
            {
                "query": {"text": query.text, "history": query.history},
                "semantic": result.semantic,
                "ms": result.ms,
                "budget": result.budget,
                "injected_chars": result.injected_chars,
                # The choice of what to inject is made on every candidate: `k` only cuts what is shown.
                "passages": [item.to_dict() for item in result.ranked[:shown]],
            }
        )


class KnowledgeFileHandler(AdminApiHandler):
    """The whole knowledge.json: export (download) and import (replace everything, validated first)."""

    def _import(self, body: bytes) -> None:
        # In a worker thread: parsing a large file on the event loop would stall every stream.
        self.services.knowledge_base.replace_all(parse_json(body))

    def get(self) -> None:
        self.set_header("Content-Disposition", 'attachment; filename="knowledge.json"')
        self.write_json(self.services.knowledge_base.export())

    async def put(self) -> None:
        await self.in_worker(self._import, self.body)
        knowledge = self.services.knowledge_base
        self.write_json({"version": knowledge.version, "documents": knowledge.list()})


class AudioCollectionHandler(AdminApiHandler):
    def get(self) -> None:
        self.write_json({"clips": self.services.audio_library.list()})

    def body_limit(self) -> int:
        return self.config.audio_max_bytes + 1024 * 1024  # the file and the form around it

    async def post(self) -> None:
        arguments: dict[str, list[bytes]] = {}
        files: dict[str, list[tornado.httputil.HTTPFile]] = {}
        try:
            tornado.httputil.parse_body_arguments(
                self.request.headers.get("Content-Type", ""), self.body, arguments, files, self.request.headers
            )
        except tornado.httputil.HTTPInputError:
            raise ApiError(400, "The upload is not a valid multipart form.", param="file") from None

        def field(name: str, default: str = "") -> str:
            values = arguments.get(name)
            return values[0].decode("utf-8", "replace").strip() if values else default

        if not files.get("file"):
            raise ApiError(400, "Send the audio as a multipart field named 'file'.", param="file")
        upload = files["file"][0]
        stem, suffix = os.path.splitext(os.path.basename(upload.filename or ""))
        # A name typed by the operator is checked as it is; one taken from the file name is made safe first.
        name = field("name") or _UNSAFE_NAME_CHARS.sub("-", stem).strip("-_")[:64].rstrip("-_") or "clip"
        activate = field("activate", "false").lower() in ("1", "true", "on", "yes")
        library = self.services.audio_library
        clip = await self.in_worker(
            library.add, name, upload.body, field("transcript"), raw_pcm=suffix.lower() == ".pcm", activate=activate
        )
        self.write_json(library.summary(clip.name), status=201)


class AudioClipHandler(AdminApiHandler):
    async def delete(self, name: str) -> None:
        await self.in_worker(self.services.audio_library.delete, name)
        self.set_status(204)
        self.finish()


class AudioActivateHandler(AdminApiHandler):
    async def post(self, name: str) -> None:
        library = self.services.audio_library
        await self.in_worker(library.activate, name)
        self.write_json({"active": name, "clips": library.list()})


class AudioWavHandler(AdminApiHandler):
    async def get(self, name: str) -> None:
        wav = await self.in_worker(self.services.audio_library.wav, name)
        self.set_header("Content-Type", "audio/wav")
        self.set_header("Cache-Control", "no-store")
        self.finish(wav)


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


class HistoryHandler(AdminApiHandler):
    """GET /admin/api/history?before=&limit=&endpoint=&outcome=&since=&until=&q=: finished requests, newest first;
    `before` is the `started_at` of the last record of the previous page."""

    async def get(self) -> None:
        def number(name: str) -> float | None:
            return self.number_argument(name, "a number (seconds since 1970)")

        limit = self.count_argument("limit", default=50, most=PAGE_LIMIT)
        page = await self.in_worker(
            self.services.history.page,
            before=number("before"),
            limit=limit,
            endpoint=self.get_query_argument("endpoint", "") or None,
            outcome=self.get_query_argument("outcome", "") or None,
            since=number("since"),
            until=number("until"),
            text=self.get_query_argument("q", "") or None,
        )
        more = len(page) == limit  # a full page: there may be older ones
        self.write_json({"records": page, "before": page[-1]["started_at"] if page and more else None})


class HistoryRecordHandler(AdminApiHandler):
    """GET /admin/api/history/{key}: one request's whole record."""

    async def get(self, key: str) -> None:
        record = await self.in_worker(self.services.history.get, key)
        if record is None:
            raise ApiError(404, f"No request {key!r} in the history.", param="key", code="not_found")
        self.write_json(record)


class StatusHandler(AdminApiHandler):
    def get(self) -> None:
        services = self.services
        log = services.request_log
        self.write_json(
            {
                "upstream": {"mode": services.upstream.mode, "base_url": services.upstream.base_url},
                "uptime_seconds": round(services.uptime(), 1),
                "in_flight": log.in_flight,
                "instance": log.instance,
                "dropped_records": services.history.dropped + services.dropped_records(),
                "totals": {outcome: log.totals.get(outcome, 0) for outcome in ("ok", "error", "cancelled")},
                "knowledge_version": services.knowledge_base.version,
                "documents": len(services.knowledge_base),
                "passages": services.retriever.passage_count,
                "semantic_retrieval": services.retriever.semantic_ready,
                "active_clip": services.audio_library.active_name(),
                "shared": None if services.shared is None else {"reachable": services.shared.available},
            }
        )


# Path arguments are checked by the services (the clip-name rule lives in the audio library): a route only says
# where one ends.
_ONE = r"([^/]+)"

default_handlers = [
    (r"/admin/api/status", StatusHandler),
    (r"/admin/api/retrieval", RetrievalTestHandler),
    (r"/admin/api/knowledge", KnowledgeCollectionHandler),
    (r"/admin/api/knowledge\.json", KnowledgeFileHandler),
    (rf"/admin/api/knowledge/{_ONE}/passages", KnowledgePassagesHandler),
    (rf"/admin/api/knowledge/{_ONE}", KnowledgeDocumentHandler),
    (r"/admin/api/tools", ToolsHandler),
    (r"/admin/api/tools/reload", ToolsReloadHandler),
    (rf"/admin/api/tools/{_ONE}/call", ToolCallHandler),
    (rf"/admin/api/tools/{_ONE}", ToolHandler),
    (r"/admin/api/history", HistoryHandler),
    (rf"/admin/api/history/{_ONE}", HistoryRecordHandler),
    (r"/admin/api/conversations", ConversationsHandler),
    (rf"/admin/api/conversations/{_ONE}", ConversationHandler),
    (r"/admin/api/audio", AudioCollectionHandler),
    (rf"/admin/api/audio/{_ONE}\.wav", AudioWavHandler),
    (rf"/admin/api/audio/{_ONE}/activate", AudioActivateHandler),
    (rf"/admin/api/audio/{_ONE}", AudioClipHandler),
]
