"""POST /rag/chat/completions: a waiting message at once, then retrieval, then the upstream's answer."""

from __future__ import annotations

import asyncio
import time

from llmserver.chat_request import ChatRequest
from llmserver.knowledge import KnowledgeBase, SearchHit
from llmserver.rag import augment, waiting_chunk

from .completions import CompletionEndpoint


class RagCompletionsHandler(CompletionEndpoint):
    endpoint = "rag"

    @property
    def knowledge_base(self) -> KnowledgeBase:
        return self.services.knowledge_base

    async def respond(self, chat: ChatRequest, api_key: str | None) -> None:
        config = self.config
        if chat.stream and config.rag_waiting_message:
            await self.events.send_json(waiting_chunk(chat.model, config.waiting_messages))
            # Let requests that arrived together get their waiting messages out before this one goes on to
            # retrieval and the upstream call (about a millisecond of work each).
            await asyncio.sleep(0)
        hits = self.retrieve(chat.last_user_text())
        body = augment(chat.body, hits, config.rag_template)
        if chat.stream:
            await self.relay_stream(body, api_key, hits)
        else:
            await self.relay_completion(body, api_key, hits)

    def retrieve(self, query: str) -> list[SearchHit]:
        started = time.perf_counter()
        config = self.config
        # On the event loop: a search takes about 0.1 ms even at 10,000 documents (bench/run.py), less than a hop
        # to a worker thread would cost.
        hits = self.knowledge_base.search(query, config.rag_top_k, config.rag_min_score)
        self.record.details["retrieval"] = {
            "query": self.request_log.truncate(query),
            "hits": [{"id": hit.id, "score": hit.score} for hit in hits],
            "ms": round((time.perf_counter() - started) * 1000, 3),
        }
        return hits


default_handlers = [
    (r"/(?:v1/)?rag/chat/completions", RagCompletionsHandler),
]
