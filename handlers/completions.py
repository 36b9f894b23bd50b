"""POST /chat/completions: the OpenAI request relayed to the upstream, streamed back as SSE.

CompletionEndpoint is the life cycle every completion endpoint shares (RAG and audio build on it): body limit,
key rules, parsing, the request record, cancellation when the client leaves, and error reporting. The relay
itself is a service (llmserver.upstream.relay) that the chat and RAG endpoints hand their request to.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tornado.iostream import StreamClosedError

from llmserver.protocol.chat_request import ChatRequest, parse_chat_request
from llmserver.protocol.errors import ApiError, ServiceError, as_api_error
from llmserver.request_log import RequestRecord, bounded_value

from .auth import upstream_key
from .base import INTERNAL_ERROR, ApiHandler
from .sse import EventStream

logger = logging.getLogger("llmserver.handlers")


class CompletionEndpoint(ApiHandler):
    endpoint = "chat"
    needs_upstream_key = True

    def body_limit(self) -> int:
        return self.config.max_body_bytes

    def initialize(self) -> None:
        self._task: asyncio.Task | None = None  # the task running post(), cancelled when the client leaves
        self._client_gone = False
        self.record: RequestRecord | None = None

    def on_connection_close(self) -> None:
        # The Agora engine closes the connection on barge-in: stop generating and cancel the upstream call now.
        super().on_connection_close()  # Tornado's own: ends a body that was still arriving
        self._client_gone = True
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def prepare(self) -> None:
        try:
            super().prepare()
        except ApiError as error:
            # Refused before the body is read (a foreign origin, a body too large): the request still gets its record.
            record = self.request_log.begin(self.request_id, self.endpoint)
            record.fail(error.status, error.message)
            self.request_log.finish(record)
            raise

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if self.record is None and status_code == 413:  # a body cut off at the limit while it arrived
            record = self.request_log.begin(self.request_id, self.endpoint)
            record.fail(413, "request body too large")
            self.request_log.finish(record)
        super().write_error(status_code, **kwargs)

    async def post(self) -> None:
        self.record = record = self.request_log.begin(self.request_id, self.endpoint)
        self.events = EventStream(self)
        try:
            if self.services.shutting_down:
                raise ApiError(
                    503,
                    "The server is shutting down; retry on another instance.",
                    code="shutting_down",
                    headers={"Connection": "close"},
                )
            api_key = upstream_key(
                self.request, self.config, self.services.upstream.mode, required=self.needs_upstream_key
            )
            chat = parse_chat_request(self.body, self.config.model)
            self._describe(chat)
            if self._client_gone:
                raise asyncio.CancelledError
            self._task = asyncio.current_task()
            await self.respond(chat, api_key)
        except (asyncio.CancelledError, StreamClosedError):
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                current.uncancel()  # the cancellation was ours and ends here
            record.cancel()
        except (ApiError, ServiceError) as exc:
            error = as_api_error(exc)
            assert error is not None
            record.fail(error.status if not self.events.started else 200, error.message)
            await self._report(error)
        except Exception:
            logger.exception("request %s failed", self.request_id)
            record.fail(500 if not self.events.started else 200, "internal error (see the server log)")
            await self._report(ApiError(500, INTERNAL_ERROR, type="server_error"))
        finally:
            self._task = None
            self.request_log.finish(record)

    def _describe(self, chat: ChatRequest) -> None:
        record = self.record
        log = self.request_log
        record.model = chat.model
        record.messages = len(chat.messages)
        record.last_user_message = log.text(chat.last_user_text())
        record.turn_id = bounded_value(chat.turn_id)
        record.engine_fields = log.bounded(chat.engine_fields)

    async def _report(self, error: ApiError) -> None:
        if self._client_gone:
            return
        if self.events.started:
            await self.events.send_error(error)
        else:
            self.send_api_error(error)

    async def respond(self, chat: ChatRequest, api_key: str | None) -> None:
        raise NotImplementedError


class RelayedCompletion(CompletionEndpoint):
    """An endpoint whose answer comes from the upstream, through the relay."""

    async def relay(self, chat: ChatRequest, body: dict[str, Any], api_key: str | None) -> None:
        relay = self.services.relay
        if chat.stream:
            await relay.stream(body, api_key, self.events, self.record)
        else:
            completion = await relay.complete(body, api_key, self.record)
            self.record.mark_chunk()
            self.write_json(completion)


class ChatCompletionsHandler(RelayedCompletion):
    endpoint = "chat"

    async def respond(self, chat: ChatRequest, api_key: str | None) -> None:
        await self.relay(chat, chat.body, api_key)


default_handlers = [
    (r"/(?:v1/)?chat/completions", ChatCompletionsHandler),
]
