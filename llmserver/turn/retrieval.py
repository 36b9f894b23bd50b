"""Retrieval in a turn: the conversation's query, the passages the retriever picks, added to what goes upstream as
one system message (llmserver.knowledge.context), and what was found kept in the trace."""

from __future__ import annotations

from collections.abc import Callable

from ..knowledge.context import augment
from ..knowledge.query import conversation_query
from ..knowledge.retriever import Retriever
from ..request_log import RetrievalDetails, RetrievalHit
from .model import ChatTurn


class RetrievalStage:
    def __init__(self, retriever: Retriever, template: str, user_text: Callable[[str], str]) -> None:
        self.retriever = retriever
        self.template = template
        self.user_text = user_text  # LOG_USER_TEXT, for the query as the record keeps it

    async def __call__(self, turn: ChatTurn) -> None:
        result = await self.retriever.retrieve(conversation_query(turn.chat.messages))
        turn.trace.retrieved(
            RetrievalDetails(
                query=self.user_text(result.query.shown),
                hits=[
                    RetrievalHit(item.passage.id, round(item.relevance, 3)) for item in result.ranked if item.injected
                ],
                ms=result.ms,
                semantic=result.semantic,
                injected_chars=result.injected_chars,
                injected=[passage.text for passage in result.injected],
            )
        )
        turn.body = augment(turn.body, result.injected, self.template)
