"""The waiting message: said at once when a turn will take a moment (retrieval, then the model), so the person on
the call hears something. Once per user turn: a caller returning with its tool results is mid-answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ..knowledge.context import waiting_chunk
from .model import ChatTurn


class WaitingMessageStage:
    def __init__(self, messages: Sequence[str]) -> None:
        self.messages = tuple(messages)

    async def __call__(self, turn: ChatTurn) -> None:
        if turn.chat.stream and turn.opens_user_turn:
            await turn.sink.send_chunk(waiting_chunk(turn.chat.model, self.messages))
            # Let requests that arrived together get their waiting messages out before this one goes on to
            # retrieval and the upstream call (a few milliseconds of work each).
            await asyncio.sleep(0)
