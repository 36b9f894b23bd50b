"""The completion service: one chat turn, from a parsed request to its answer.

    interrupted turns marked → memory splice → [waiting message] → [retrieve → augment] → the server's tools
    offered → the history repaired → relay or tool loop (streamed, or collected for `stream: false`), the exchange
    remembered as the tools run; the answer made speakable for voice platforms (speech.py), its first sentence timed

The stages are composed per endpoint here, in one place (llmserver.endpoints says what each endpoint does): a new
stage is one file and one line below. The audio endpoint plays its clip (llmserver.audio.responder).
"""

from __future__ import annotations

from typing import Any

from ..audio.responder import ClipResponder
from ..endpoints import ENDPOINTS, Endpoint
from ..protocol.chat_request import ChatRequest
from ..upstream.relay import Relay
from .history import HistoryRepairStage, InterruptedTurnsStage
from .model import AnswerSink, Caller, ChatTurn, Stage
from .speech import SpokenAnswer, speakable_completion
from .trace import TurnTrace


class CompletionService:
    def __init__(
        self,
        relay: Relay,
        clips: ClipResponder,
        *,
        conversation: Stage,
        waiting_message: Stage | None,
        retrieval: Stage,
        server_tools: Stage,
        speakable: str = "auto",
    ) -> None:
        """`speakable`: SPEAKABLE (on, off, or auto: for voice platforms' requests)."""
        self.relay = relay
        self.clips = clips
        self.speakable = speakable
        self._stages: dict[str, list[Stage]] = {}
        for endpoint in ENDPOINTS:
            stages: list[Stage] = [InterruptedTurnsStage(), conversation]
            if endpoint.waiting_message and waiting_message is not None:
                stages.append(waiting_message)
            if endpoint.retrieves:
                stages.append(retrieval)
            if endpoint.offers_tools:
                stages.append(server_tools)
            stages.append(HistoryRepairStage())
            self._stages[endpoint.name] = stages

    async def answer(
        self, chat: ChatRequest, endpoint: Endpoint, caller: Caller, sink: AnswerSink, trace: TurnTrace
    ) -> dict[str, Any] | None:
        """Streams the answer to `sink`, or (`stream: false`) returns it as one completion."""
        if endpoint.plays_clip:
            return await self.clips.answer(chat, sink, trace)
        turn = ChatTurn(chat, endpoint, caller, sink, trace)
        try:
            for stage in self._stages[endpoint.name]:
                await stage(turn)
            speakable = self.speakable == "on" or (self.speakable == "auto" and chat.platform is not None)
            trace.speaking(speakable)
            if chat.stream:
                spoken = SpokenAnswer(sink, trace, speakable, may_start=turn.late_start)
                await self.relay.stream(turn.body, caller.upstream_key, spoken, trace, turn.tools)
                return None
            completion = await self.relay.complete(turn.body, caller.upstream_key, trace, turn.tools)
            return speakable_completion(completion) if speakable else completion
        finally:
            await turn.end()
