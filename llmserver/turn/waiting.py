"""The waiting message: said when a turn will take a moment (retrieval, then the model), so the person on the call
hears something; in the caller's language (the last user message's script; RAG_WAITING_MESSAGES tags each message
with its language). Once per user turn: a caller returning with its tool results is mid-answer.

At once by default; with RAG_WAITING_MESSAGE=late, only when the answer has said nothing yet after
RAG_WAITING_DELAY_MS (a quick answer then needs none).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ..knowledge.context import waiting_chunk
from ..protocol.language import by_language, in_language
from .model import ChatTurn


class WaitingMessageStage:
    def __init__(self, messages: Sequence[str], late_after: float | None = None) -> None:
        """`late_after`: seconds without the answer's first words before the message is said (None: at once)."""
        self.messages = by_language(tuple(messages))
        self.late_after = late_after

    async def __call__(self, turn: ChatTurn) -> None:
        if not (turn.chat.stream and turn.opens_user_turn):
            return
        chunk = waiting_chunk(turn.chat.model, in_language(self.messages, turn.language))
        sink = turn.sink
        if self.late_after is None:
            await sink.send_chunk(chunk)
            # Let requests that arrived together get their waiting messages out before this one goes on to
            # retrieval and the upstream call (a few milliseconds of work each).
            await asyncio.sleep(0)
            return

        async def if_still_silent() -> None:
            if not sink.started:  # checked and written in one step: the answer cannot slip in between
                await sink.send_chunk(chunk)

        timer = asyncio.get_running_loop().call_later(
            self.late_after, lambda: turn.background(asyncio.ensure_future(if_still_silent()))
        )
        turn.on_end.append(timer.cancel)
        turn.late_start = True
