"""POST /rag/chat/completions: a waiting message at once, then retrieval, then the upstream's answer."""

from __future__ import annotations

import asyncio
import time

from llmserver.knowledge.context import ContextPassage, augment, waiting_chunk
from llmserver.protocol.chat_request import ChatRequest
from llmserver.request_log import RetrievalDetails, RetrievalHit

from .completions import RelayedCompletion


class RagCompletionsHandler(RelayedCompletion):
    endpoint = "rag"

    async def respond(self, chat: ChatRequest, api_key: str | None) -> None:
        config = self.config
        if chat.stream and config.rag_waiting_message:
            await self.events.send_json(waiting_chunk(chat.model, config.waiting_messages))
            self.record.mark_chunk()
            # Let requests that arrived together get their waiting messages out before this one goes on to
            # retrieval and the upstream call (about a millisecond of work each).
            await asyncio.sleep(0)
        passages = self.retrieve(chat.last_user_text())
        await self.relay(chat, augment(chat.body, passages, config.rag_template), api_key)

    def retrieve(self, query: str) -> list[ContextPassage]:
        started = time.perf_counter()
        config = self.config
        # On the event loop: a search takes about 0.1 ms even at 10,000 documents (bench/run.py), less than a hop
        # to a worker thread would cost.
        hits = self.services.knowledge_base.search(query, config.rag_top_k, config.rag_min_score)
        self.record.retrieval = RetrievalDetails(
            query=self.request_log.text(query),
            hits=[RetrievalHit(hit.id, hit.score) for hit in hits],
            ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return [ContextPassage(hit.id, hit.title, hit.content) for hit in hits]


default_handlers = [
    (r"/(?:v1/)?rag/chat/completions", RagCompletionsHandler),
]
