"""POST /chat/completions, /rag/chat/completions, /audio/chat/completions (and under /v1/): one handler, given its
endpoint (llmserver.endpoints) through the route.

The handler keeps what is HTTP's: the body limit and admission under MAX_STREAMS, the key rules, parsing, the
request record's life cycle, cancellation when the client leaves (the Agora engine closes the connection on
barge-in) and error reporting. The turn itself — memory, retrieval, tools, the relay — is the completion service's
(llmserver.turn).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tornado.iostream import StreamClosedError

from llmserver.endpoints import ENDPOINTS, Endpoint
from llmserver.protocol.chat_request import parse_chat_request
from llmserver.protocol.errors import ApiError, ServiceError, as_api_error
from llmserver.request_log import RequestRecord
from llmserver.turn.model import Caller

from .auth import bearer_token, upstream_key
from .base import INTERNAL_ERROR, ApiHandler
from .sse import EventStream

logger = logging.getLogger("llmserver.handlers")


class CompletionHandler(ApiHandler):
    def initialize(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._task: asyncio.Task | None = None  # the task running post(), cancelled when the client leaves
        self._client_gone = False
        self.record: RequestRecord | None = None  # begun when the request is admitted (prepare)
        self._record_ended = False
        self._posted = False

    def body_limit(self) -> int:
        return self.config.max_body_bytes

    def on_connection_close(self) -> None:
        # The Agora engine closes the connection on barge-in: stop generating and cancel the upstream call now.
        super().on_connection_close()  # Tornado's own: ends a body that was still arriving
        self._client_gone = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        elif not self._posted and self.record is not None:
            self.record.cancel()  # gone while its body arrived: post() never runs
            self._end_record()

    def prepare(self) -> None:
        # The request counts as in flight from now, while its body arrives, so that a burst cannot pass the cap all
        # at once before any of it reaches post(); a refused one still gets its record.
        self.record = self.request_log.begin(self.request_id, self.endpoint.name)
        try:
            super().prepare()
            if self.request_log.in_flight > self.config.max_streams:  # this request included
                self.services.metrics.rejected.labels(self.endpoint.name).inc()
                raise ApiError(
                    503,
                    f"The server is answering its limit of {self.config.max_streams} requests; retry in a moment.",
                    code="overloaded",
                    headers={"Retry-After": "1"},
                )
        except ApiError as error:  # a foreign origin, a body too large, the MAX_STREAMS cap
            self.record.fail(error.status, error.message, error.code)
            self._end_record()
            raise

    def _end_record(self) -> None:
        if self.record is not None and not self._record_ended:
            self._record_ended = True
            self.request_log.finish(self.record)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if self.record is not None and not self._posted and not self._record_ended:  # refused while the body arrived
            if status_code == 413:
                self.record.fail(413, "request body too large", "request_too_large")
            else:
                self.record.fail(status_code, f"refused before the body was read (HTTP {status_code})")
            self._end_record()
        super().write_error(status_code, **kwargs)

    def on_finish(self) -> None:
        self._end_record()  # a request answered before post() (post() ends its own record first)

    async def post(self) -> None:
        self._posted = True
        record = self.record
        assert record is not None
        self.events = EventStream(self, record)
        try:
            if self.services.shutting_down:
                raise ApiError(
                    503,
                    "The server is shutting down; retry on another instance.",
                    code="shutting_down",
                    headers={"Connection": "close"},
                )
            request = self.request
            caller = Caller(
                upstream_key(request, self.config, self.services.upstreams, self.endpoint.needs_upstream_key),
                bearer_token(request),
                request.headers.get("X-Conversation-Id"),
            )
            chat = parse_chat_request(self.body, self.config.model, request.headers.get("X-Voice-Platform"))
            self.request_log.describe(record, chat)
            if self._client_gone:
                raise asyncio.CancelledError
            self._task = asyncio.current_task()
            completion = await self.services.completions.answer(chat, self.endpoint, caller, self.events, record)
            if completion is not None:
                self.events.send_completion(completion)
        except (asyncio.CancelledError, StreamClosedError):
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                current.uncancel()  # the cancellation was ours and ends here
            record.cancel()
        except (ApiError, ServiceError) as exc:
            error = as_api_error(exc)
            assert error is not None
            record.fail(error.status if not self.events.started else 200, error.message, error.code)
            await self._report(error)
        except Exception:
            logger.exception("request %s failed", self.request_id)
            record.fail(500 if not self.events.started else 200, "internal error (see the server log)", "server_error")
            await self._report(ApiError(500, INTERNAL_ERROR, type="server_error"))
        finally:
            self._task = None
            self._end_record()

    async def _report(self, error: ApiError) -> None:
        if self._client_gone:
            return
        if self.events.started:
            await self.events.send_error(error)
        else:
            self.send_api_error(error)


default_handlers = [(endpoint.route, CompletionHandler, {"endpoint": endpoint}) for endpoint in ENDPOINTS]
