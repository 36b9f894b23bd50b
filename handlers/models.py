"""GET /v1/models (the upstream's model list, which LiveKit uses to prewarm) and GET /healthz."""

from __future__ import annotations

from .base import ApiHandler


class ModelsHandler(ApiHandler):
    async def get(self) -> None:
        content = await self.services.upstream.list_models(self.upstream_key())
        self.set_header("Content-Type", "application/json")
        self.finish(content)


class HealthHandler(ApiHandler):
    def get(self) -> None:
        self.write_json({"status": "ok", "upstream": self.services.upstream.mode})


default_handlers = [
    (r"/(?:v1/)?models", ModelsHandler),
    (r"/healthz", HealthHandler),
]
