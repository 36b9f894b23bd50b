"""POST /rag/chat/completions: a waiting message at once, then retrieval, then the upstream's answer."""

from __future__ import annotations

import asyncio

from llmserver.knowledge.context import augment, waiting_chunk
from llmserver.knowledge.passages import Passage
from llmserver.knowledge.query import conversation_query
from llmserver.protocol.chat_request import ChatRequest
from llmserver.request_log import RetrievalDetails, RetrievalHit

from .completions import RelayedCompletion


class RagCompletionsHandler(RelayedCompletion):
    endpoint = "rag"

    async def respond(self, chat: ChatRequest, api_key: str | None) -> None:
        config = self.config
        # The waiting message opens a new user turn; a caller returning with its tool results is mid-answer.
        new_turn = chat.messages[-1].get("role") == "user"
        if chat.stream and config.rag_waiting_message and new_turn:
            await self.events.send_json(waiting_chunk(chat.model, config.waiting_messages))
            self.record.mark_chunk()
            # Let requests that arrived together get their waiting messages out before this one goes on to
            # retrieval and the upstream call (a few milliseconds of work each).
            await asyncio.sleep(0)
        passages = await self.retrieve(chat)
        await self.relay(chat, augment(self.request_body(chat), passages, config.rag_template), api_key)

    async def retrieve(self, chat: ChatRequest) -> list[Passage]:
        # On the event loop: a search takes a few milliseconds even at 10,000 passages (bench/run.py), the query's
        # embedding included.
        result = await self.services.retriever.retrieve(conversation_query(chat.messages))
        self.record.retrieval = RetrievalDetails(
            query=self.request_log.text(result.query.shown),
            hits=[RetrievalHit(item.passage.id, round(item.relevance, 3)) for item in result.ranked if item.injected],
            ms=result.ms,
            semantic=result.semantic,
            injected_chars=result.injected_chars,
            injected=[passage.text for passage in result.injected],
        )
        return result.injected


default_handlers = [
    (r"/(?:v1/)?rag/chat/completions", RagCompletionsHandler),
]
