"""The completion endpoints as data: one table that the routes, the settings, the model routes and the dashboard's
filters all read, so that an endpoint is named once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    name: str  # in records, metrics, settings (SERVER_TOOLS) and the dashboard's filters
    path: str  # under / and /v1/
    description: str
    retrieves: bool = False  # adds passages from the knowledge base
    offers_tools: bool = False  # may offer the server's tools (SERVER_TOOLS chooses among these)
    needs_upstream_key: bool = True  # calls the upstream, so needs a key to call it with
    waiting_message: bool = False  # says something at once, before retrieval and the upstream
    plays_clip: bool = False  # answers with the active audio clip, no upstream

    @property
    def route(self) -> str:
        return rf"/(?:v1/)?{self.path}"

    @property
    def models_route(self) -> str:
        """`GET {base_url}/models` for this endpoint's base URL (LiveKit prewarms with it)."""
        return rf"/(?:v1/)?{self.path.removesuffix('chat/completions')}models"


CHAT = Endpoint("chat", "chat/completions", "relayed to the upstream", offers_tools=True)
RAG = Endpoint(
    "rag",
    "rag/chat/completions",
    "a waiting message, then the upstream's answer from the knowledge base",
    retrieves=True,
    offers_tools=True,
    waiting_message=True,
)
AUDIO = Endpoint("audio", "audio/chat/completions", "the active audio clip", needs_upstream_key=False, plays_clip=True)
ENDPOINTS: tuple[Endpoint, ...] = (CHAT, RAG, AUDIO)
TOOL_ENDPOINTS: tuple[str, ...] = tuple(endpoint.name for endpoint in ENDPOINTS if endpoint.offers_tools)
