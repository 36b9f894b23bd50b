"""POST /chat/completions: the OpenAI request relayed to the upstream, streamed back as SSE.

CompletionEndpoint is the shared life cycle of every completion endpoint (RAG and audio build on it): body
limit, key rules, parsing, the request record, cancellation when the client leaves, and error reporting.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from tornado.iostream import StreamClosedError

from llmserver.chat_request import ChatRequest, parse_chat_request
from llmserver.errors import ApiError
from llmserver.upstream import Passage, Upstream

from .base import EventStream, LimitedBodyHandler

logger = logging.getLogger("llmserver.handlers")


class CompletionEndpoint(LimitedBodyHandler):
    endpoint = "chat"
    needs_upstream_key = True

    def body_limit(self) -> int:
        return self.config.max_body_bytes

    @property
    def upstream(self) -> Upstream:
        return self.services.upstream

    def initialize(self) -> None:
        self._task: asyncio.Task | None = None  # the task running post(), cancelled when the client leaves
        self._client_gone = False

    def on_connection_close(self) -> None:
        # The Agora engine closes the connection on barge-in: stop generating and cancel the upstream call now.
        super().on_connection_close()  # Tornado's own: ends a body that was still arriving
        self._client_gone = True
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def prepare(self) -> None:
        super().prepare()
        if self.declared_too_large:
            # Refused before the body is read; the request still gets its record.
            record = self.request_log.begin(self.request_id, self.endpoint)
            record.fail(413, "request body too large")
            self.request_log.finish(record)
            self.check_body_size()

    async def post(self) -> None:
        self.record = self.request_log.begin(self.request_id, self.endpoint)
        self.events = EventStream(self, self.record)
        try:
            if self.services.shutting_down:
                self.set_header("Connection", "close")
                raise ApiError(503, "The server is shutting down; retry on another instance.", code="shutting_down")
            api_key = self.upstream_key(required=self.needs_upstream_key)
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
            self.record.cancel()
        except ApiError as error:
            self.record.fail(error.status if not self.events.started else 200, error.message)
            await self._report(error)
        except Exception:
            logger.exception("request %s failed", self.request_id)
            error = ApiError(500, "The server had an error while processing your request.", type="server_error")
            self.record.fail(500 if not self.events.started else 200, "internal error (see the server log)")
            await self._report(error)
        finally:
            self._task = None
            self.request_log.finish(self.record)

    def _describe(self, chat: ChatRequest) -> None:
        record = self.record
        record.model = chat.model
        record.messages = len(chat.messages)
        record.last_user_message = self.request_log.truncate(chat.last_user_text())
        record.turn_id = chat.turn_id
        record.engine_fields = self.request_log.bounded(chat.engine_fields)

    async def _report(self, error: ApiError) -> None:
        if self._client_gone:
            return
        if self.events.started:
            await self.events.send_error(error)
        else:
            self.send_api_error(error)

    async def respond(self, chat: ChatRequest, api_key: str | None) -> None:
        if chat.stream:
            await self.relay_stream(chat.body, api_key)
        else:
            await self.relay_completion(chat.body, api_key)

    async def relay_stream(self, body: dict[str, Any], api_key: str | None, passages: Sequence[Passage] = ()) -> None:
        """Streams the upstream's chunks to the client as they come, then [DONE]."""
        # Retry only while nothing of this response has reached the client (on /rag the waiting message has).
        self.record.upstream_called_ms = self.record.elapsed_ms()
        chunks = self.upstream.stream(body, api_key, passages, retry=not self.events.started)
        try:
            try:
                async with asyncio.timeout(self.config.first_token_timeout):
                    first = await self._first_chunk(chunks)
            except TimeoutError:
                raise ApiError(
                    504,
                    f"The upstream LLM sent no token within {self.config.first_token_timeout:g} s.",
                    code="first_token_timeout",
                ) from None
            except StopAsyncIteration:
                await self.events.done()
                return
            await self._send_chunk(first)
            self.record.upstream_first_chunk_ms = self.record.elapsed_ms()
            async for payload in chunks:
                await self._send_chunk(payload)
            await self.events.done()
        finally:
            await chunks.aclose()

    async def _first_chunk(self, chunks: AsyncIterator[bytes]) -> bytes:
        """The upstream's first chunk. Once the response has begun (/rag's waiting message), SSE comments keep
        the connection alive while the model thinks: clients such as LiveKit's give up after 10 s of silence."""
        interval = self.config.keepalive_seconds
        if not self.events.started or not interval:
            return await anext(chunks)
        waiting = asyncio.ensure_future(anext(chunks))
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=interval)
                if done:
                    return waiting.result()
                await self.events.send_comment("keep-alive")
        finally:
            if not waiting.done():
                # The client left or the first-token timeout struck: stop the upstream call too, and let the
                # generator finish closing before anyone else touches it.
                waiting.cancel()
                await asyncio.wait({waiting})
            elif not waiting.cancelled():
                waiting.exception()  # retrieved, so a failure met while leaving is not logged as unhandled

    async def _send_chunk(self, payload: bytes) -> None:
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise ApiError(502, "The upstream sent a chunk that is not JSON.", code="upstream_bad_chunk") from None
        if not isinstance(chunk, dict):
            raise ApiError(502, "The upstream sent a chunk that is not a JSON object.", code="upstream_bad_chunk")
        if "error" in chunk:
            raise _upstream_stream_error(chunk["error"])
        await self.events.send(payload)

    async def relay_completion(
        self, body: dict[str, Any], api_key: str | None, passages: Sequence[Passage] = ()
    ) -> None:
        self.record.upstream_called_ms = self.record.elapsed_ms()
        content = await self.upstream.complete(body, api_key, passages)
        self.record.upstream_first_chunk_ms = self.record.elapsed_ms()
        self.record.mark_chunk()
        self.set_header("Content-Type", "application/json")
        self.finish(content)


def _upstream_stream_error(error: Any) -> ApiError:
    if not isinstance(error, dict):
        return ApiError(502, f"Upstream error: {error}", code="upstream_error")
    message = error.get("message") if isinstance(error.get("message"), str) else "The upstream reported an error."
    code = error.get("code")
    return ApiError(
        502,
        message,
        type=error.get("type") if isinstance(error.get("type"), str) else "server_error",
        code=str(code) if code is not None else "upstream_error",
    )


class ChatCompletionsHandler(CompletionEndpoint):
    endpoint = "chat"


default_handlers = [
    (r"/(?:v1/)?chat/completions", ChatCompletionsHandler),
]
