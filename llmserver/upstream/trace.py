"""What a turn reports of itself as it runs: the upstream calls, what reached the caller, the passes and the tools.

The relay, the tool loop and the turn's stages report here and know nothing of who listens; the request record
(llmserver.request_log.RequestRecord) is the listener in the server, so that what a request leaves behind is kept
in one place and each thing is counted once.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..tools.registry import ToolOutcome


class RelayTrace(Protocol):
    def upstream_called(self) -> None:
        """The first upstream request of the answer is about to be made."""

    def attempted(self, upstream: str) -> None:
        """A request was made to the upstream of that name (more than one when a failure before the first chunk
        was retried, or moved to another upstream, or hedged)."""

    def attempt_ended(self, upstream: str, outcome: str, ms: float, code: str | None) -> None:
        """An attempt ended: "won" (its first chunk or completion came first), "failed" (with the error's code) or
        "cancelled" (it lost a hedged race, or the caller left); `ms` from its start."""

    def upstream_answered(self, upstream: str, hedged: bool) -> None:
        """The first chunk (or completion) arrived, from that upstream; `hedged`: a second attempt had been
        started."""

    def sent(self, chunks: int = 1) -> None:
        """Chunks reached the caller's connection."""

    def said(self, text: str) -> None:
        """Text of the answer, as the caller got it."""

    def used(self, usage: Any) -> None:
        """The answer's usage, as the upstream counted it (summed over the tool loop's passes); may be None."""

    def pass_began(self) -> int:
        """A pass of the tool loop began; returns its number, from 1."""
        ...

    def pass_gap(self, ms: float) -> None:
        """The server's own time between one pass's end and the next's upstream call, the tools' time included."""

    def tool_ran(self, outcome: ToolOutcome, pass_number: int) -> None:
        """A server tool call ended (well or not)."""
