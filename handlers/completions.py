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

from llmserver.protocol.chat_request import ChatRequest, message_text, parse_chat_request
from llmserver.protocol.errors import ApiError, ServiceError, as_api_error
from llmserver.request_log import MAX_LOGGED_MESSAGES, RequestRecord, ToolCallDetails, bounded_value
from llmserver.tools.memory import Exchange, bounded_turn_id, conversation_key, turn_text
from llmserver.tools.registry import ToolOutcome
from llmserver.upstream.tool_loop import ToolUse

from .auth import bearer_token, upstream_key
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
        self.record: RequestRecord | None = None  # begun when the request is admitted (prepare)
        self._record_ended = False
        self._posted = False

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
        self.record = self.request_log.begin(self.request_id, self.endpoint)
        try:
            super().prepare()
            if self.request_log.in_flight > self.config.max_streams:  # this request included
                self.services.metrics.rejected.labels(self.endpoint).inc()
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
            record.fail(error.status if not self.events.started else 200, error.message, error.code)
            await self._report(error)
        except Exception:
            logger.exception("request %s failed", self.request_id)
            record.fail(500 if not self.events.started else 200, "internal error (see the server log)", "server_error")
            await self._report(ApiError(500, INTERNAL_ERROR, type="server_error"))
        finally:
            self._task = None
            self._end_record()

    def _describe(self, chat: ChatRequest) -> None:
        record = self.record
        log = self.request_log
        record.model = chat.model
        record.messages = len(chat.messages)
        record.last_user_message = log.text(chat.last_user_text())
        if log.text_mode != "none":
            record.messages_logged = [
                {"role": str(m.get("role"))[:20], "text": log.text(message_text(m))}
                for m in chat.messages[-MAX_LOGGED_MESSAGES:]
            ]
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
    """An endpoint whose answer comes from the upstream, through the relay (and the server's tools, if it offers
    them), with the conversation's remembered tool exchanges spliced into the history."""

    def request_body(self, chat: ChatRequest) -> dict[str, Any]:
        """The body to send: the conversation's earlier tool exchanges put back where they belong."""
        key = conversation_key(
            chat.engine_fields,
            chat.body.get("user"),
            self.request.headers.get("X-Conversation-Id"),
            bearer_token(self.request),
        )
        self.record.conversation = key
        if key is None:
            return chat.body
        messages = self.services.memory.splice(key, chat.messages, self._turn_ids(chat))
        return chat.body if messages is chat.messages else {**chat.body, "messages": messages}

    @staticmethod
    def _turn_ids(chat: ChatRequest) -> list[Any]:
        fields = chat.engine_fields.get("messages")
        return [f.get("turn_id") if isinstance(f, dict) else None for f in fields] if isinstance(fields, list) else []

    def tool_use(self, chat: ChatRequest) -> ToolUse | None:
        """The server's tools for this request, or None: not on this endpoint, `tool_choice: "none"`, or `n` > 1."""
        body = chat.body
        if self.endpoint not in self.config.server_tools or body.get("tool_choice") == "none":
            return None
        if body.get("n") not in (None, 1):
            return None
        offered = self.services.tools.offered(body.get("tools") or [])
        if not offered:
            return None
        record, log, memory = self.record, self.request_log, self.services.memory
        key = record.conversation
        last_user = max((i for i, m in enumerate(chat.messages) if m.get("role") == "user"), default=None)
        turn_ids = self._turn_ids(chat)
        turn_id = turn_ids[last_user] if last_user is not None and last_user < len(turn_ids) else None

        def on_exchange(messages: list[dict[str, Any]], outcomes: list[ToolOutcome]) -> None:
            for outcome in outcomes:
                record.tool_calls.append(
                    ToolCallDetails(
                        outcome.call.name,
                        outcome.source,
                        log.text(outcome.call.arguments),
                        outcome.ms,
                        "ok" if outcome.ok else "error",
                        outcome.error,
                        record.passes,
                    )
                )
            if key is not None:
                # The assistant's words of that pass are in the history the caller keeps; the calls are not.
                kept = ({**messages[0], "content": None}, *messages[1:])
                memory.remember(key, Exchange(turn_text(chat.last_user_text()), bounded_turn_id(turn_id), kept))

        return ToolUse(offered, self.services.tools, self.config.tool_passes, on_exchange)

    async def relay(self, chat: ChatRequest, body: dict[str, Any], api_key: str | None) -> None:
        relay = self.services.relay
        tools = self.tool_use(chat)
        if chat.stream:
            await relay.stream(body, api_key, self.events, self.record, tools)
        else:
            completion = await relay.complete(body, api_key, self.record, tools)
            self.record.mark_chunk()
            message = (completion.get("choices") or [{}])[0].get("message") or {}
            if isinstance(message.get("content"), str):
                self.record.add_reply(message["content"])
            self.write_json(completion)


class ChatCompletionsHandler(RelayedCompletion):
    endpoint = "chat"

    async def respond(self, chat: ChatRequest, api_key: str | None) -> None:
        await self.relay(chat, self.request_body(chat), api_key)


default_handlers = [
    (r"/(?:v1/)?chat/completions", ChatCompletionsHandler),
]
