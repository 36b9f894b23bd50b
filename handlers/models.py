"""GET /v1/models (LiveKit prewarms with `GET {base_url}/models`, so each endpoint's base URL has one) and
GET/HEAD /healthz."""

from __future__ import annotations

from .auth import upstream_key
from .base import ApiHandler


class ModelsHandler(ApiHandler):
    """The upstream's model list, for the chat and RAG endpoints' base URLs."""

    async def get(self) -> None:
        key = upstream_key(self.request, self.config, self.services.upstream.mode)
        self.write_json(await self.services.upstream.list_models(key))


class AudioModelsHandler(ApiHandler):
    """The audio endpoint calls no upstream: it plays clips under whatever model name it is asked for."""

    def get(self) -> None:
        upstream_key(self.request, self.config, self.services.upstream.mode, required=False)  # API_KEYS still apply
        model = {"id": self.config.model, "object": "model", "created": 0, "owned_by": "custom-llm-server"}
        self.write_json({"object": "list", "data": [model]})


class HealthHandler(ApiHandler):
    def get(self) -> None:
        self.write_json({"status": "ok", "upstream": self.services.upstream.mode})

    def head(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish()


default_handlers = [
    (r"/(?:v1/)?(?:rag/)?models", ModelsHandler),
    (r"/(?:v1/)?audio/models", AudioModelsHandler),
    (r"/healthz", HealthHandler),
]
