"""What the server needs of an LLM, with no SDK in sight: OpenAIUpstream and the OfflineResponder both provide it.

An upstream validates what it receives: a stream yields chunks that are JSON objects (an error event, a chunk
that is not JSON, a broken connection or a timeout is raised as an UpstreamError), and a completion is a JSON
object. Whether a failure may be retried is the upstream's to say; when to retry is the relay's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from ..protocol.errors import ApiError


@dataclass(frozen=True, slots=True)
class UpstreamChunk:
    """One streamed chunk: the upstream's own bytes (relayed as they are) and their parsed JSON."""

    raw: bytes
    data: dict[str, Any]


class UpstreamError(ApiError):
    """A failed upstream call, as the client will see it.

    `retryable`: the request may be sent again (nothing of the answer came back: a refused or dropped
    connection, a 429 or 5xx, a stream that broke before its first chunk). `dropped`: the connection closed
    before any of the answer came back, as a kept-alive connection does when the upstream (or a proxy) closed it
    meanwhile; a retry on another connection needs no back-off. `retry_after`: seconds the upstream asked for.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        retryable: bool = False,
        dropped: bool = False,
        retry_after: float | None = None,
        type: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(status, message, type=type, param=param, code=code)
        self.retryable = retryable
        self.dropped = dropped
        self.retry_after = retry_after


class Upstream(Protocol):
    mode: str  # "openai" or "offline"
    base_url: str | None  # shown to operators, without credentials
    has_own_key: bool  # False: it is called with the caller's key

    def stream(self, body: dict[str, Any], api_key: str | None) -> AsyncIterator[UpstreamChunk]:
        """The chunks of a streamed completion, up to (not including) [DONE]."""
        ...

    async def complete(self, body: dict[str, Any], api_key: str | None) -> dict[str, Any]: ...

    async def list_models(self, api_key: str | None) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...
