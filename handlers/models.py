"""GET /v1/models (LiveKit prewarms with `GET {base_url}/models`, so each endpoint's base URL has one), and the
operations routes: GET/HEAD /healthz (alive), /readyz (ready to answer as configured), /metrics (Prometheus), and
GET /ping, which Agora's own samples and test scripts call."""

from __future__ import annotations

from llmserver.endpoints import ENDPOINTS

from .auth import upstream_key
from .base import ApiHandler


class ModelsHandler(ApiHandler):
    """The upstream's model list, for the chat and RAG endpoints' base URLs."""

    async def get(self) -> None:
        key = upstream_key(self.request, self.config, self.services.upstreams)
        self.write_json(await self.services.upstreams.list_models(key))


class AudioModelsHandler(ApiHandler):
    """The audio endpoint calls no upstream: it plays clips under whatever model name it is asked for."""

    def get(self) -> None:
        upstream_key(self.request, self.config, self.services.upstreams, required=False)  # API_KEYS still apply
        model = {"id": self.config.model, "object": "model", "created": 0, "owned_by": "custom-llm-server"}
        self.write_json({"object": "list", "data": [model]})


class HealthHandler(ApiHandler):
    """Alive: the process answers. Nothing else is checked (a load balancer's liveness probe)."""

    def get(self) -> None:
        self.write_json({"status": "ok", "upstream": self.services.upstreams.mode})

    head = get  # Tornado sends GET's headers, Content-Length included, and no body


class PingHandler(ApiHandler):
    """Agora's Go sample answers `GET /ping` with `{"message": "pong"}`; its test scripts check it first."""

    def get(self) -> None:
        self.write_json({"message": "pong"})

    head = get


class ReadyHandler(ApiHandler):
    """Ready: the knowledge base is loaded and the embedding model (if any) is ready; 503 until then, so a load
    balancer sends no traffic to a process that would answer less well. Redis and the history are reported in the
    checks but never make it 503 (see Services.readiness)."""

    def get(self) -> None:
        ready, checks = self.services.readiness()
        self.write_json({"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503)

    head = get


class MetricsHandler(ApiHandler):
    def get(self) -> None:
        body, content_type = self.services.metrics.exposition()
        self.set_header("Content-Type", content_type)
        self.finish(body)


default_handlers = [
    *((endpoint.models_route, AudioModelsHandler if endpoint.plays_clip else ModelsHandler) for endpoint in ENDPOINTS),
    (r"/healthz", HealthHandler),
    (r"/ping", PingHandler),
    (r"/readyz", ReadyHandler),
    (r"/metrics", MetricsHandler),
]
