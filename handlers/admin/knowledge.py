"""/admin/api/knowledge (documents, their passages, the whole file) and /admin/api/retrieval (what the RAG
endpoint would inject, and why)."""

from __future__ import annotations

from typing import Any

from llmserver.knowledge.query import RetrievalQuery, conversation_query, single_query
from llmserver.protocol.errors import ApiError
from llmserver.protocol.json_body import parse_json

from .base import ONE, AdminApiHandler

MAX_SHOWN_PASSAGES = 10_000  # the retrieval test's `k`; the candidates are far fewer anyway


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


default_handlers = [
    (r"/admin/api/retrieval", RetrievalTestHandler),
    (r"/admin/api/knowledge", KnowledgeCollectionHandler),
    (r"/admin/api/knowledge\.json", KnowledgeFileHandler),
    (rf"/admin/api/knowledge/{ONE}/passages", KnowledgePassagesHandler),
    (rf"/admin/api/knowledge/{ONE}", KnowledgeDocumentHandler),
]
