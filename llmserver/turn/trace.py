"""What a turn reports beyond the relay's events: whose conversation it is, what was retrieved, which clip played.
The request record is the listener (llmserver.request_log.RequestRecord)."""

from __future__ import annotations

from typing import Protocol

from ..request_log import AudioDetails, RetrievalDetails
from ..upstream.trace import RelayTrace


class TurnTrace(RelayTrace, Protocol):
    def conversation_is(self, key: str | None) -> None: ...

    def retrieved(self, details: RetrievalDetails) -> None: ...

    def played(self, details: AudioDetails) -> None: ...

    def first_sentence(self) -> None:
        """The answer's first sentence is complete at the caller (what the engine's TTS waits for)."""

    def speaking(self, speakable: bool) -> None:
        """Whether the answer is made speakable (SPEAKABLE, and whether the caller is a voice platform)."""

    def history_repaired(self, changes: dict[str, int]) -> None:
        """The history was repaired before going upstream (llmserver.turn.history): what changed, counted."""
