"""A fake OpenAI-compatible embeddings endpoint (`POST /v1/embeddings`) on 127.0.0.1, speaking the real wire format.

Its vectors come from the bundled model, so they mean something; `behaviour` makes it fail, stall or miscount.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import tornado.httpserver
import tornado.netutil
import tornado.web

from llmserver.knowledge.embeddings import BundledEmbedder


@dataclass
class EmbeddingsBehaviour:
    status: int = 200
    delay: float = 0.0
    drop_one: bool = False  # answer one vector fewer than asked
    requests: list[list[str]] = field(default_factory=list)


class EmbeddingsHandler(tornado.web.RequestHandler):
    def initialize(self, fake: FakeEmbeddings) -> None:
        self.fake = fake

    def check_xsrf_cookie(self) -> None:
        return None

    async def post(self) -> None:
        behaviour = self.fake.behaviour
        body = json.loads(self.request.body)
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        behaviour.requests.append(texts)
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        if behaviour.status != 200:
            self.set_status(behaviour.status)
            self.finish({"error": {"message": "fake embeddings failure", "type": "server_error", "code": None}})
            return
        vectors = self.fake.model.embed(texts)
        if behaviour.drop_one:
            vectors = vectors[:-1]
        data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
        usage = {
            "prompt_tokens": sum(len(t.split()) for t in texts),
            "total_tokens": sum(len(t.split()) for t in texts),
        }
        self.finish({"object": "list", "data": data, "model": body["model"], "usage": usage})


class FakeEmbeddings:
    def __init__(self) -> None:
        self.behaviour = EmbeddingsBehaviour()
        self.model = BundledEmbedder()
        app = tornado.web.Application([(r"/v1/embeddings", EmbeddingsHandler, {"fake": self})])
        self._server = tornado.httpserver.HTTPServer(app)
        self.port = 0

    def start(self) -> FakeEmbeddings:
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self._server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def stop(self) -> None:
        self._server.stop()
        await self._server.close_all_connections()
