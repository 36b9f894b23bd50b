"""Base handlers: the services as typed properties, the one error shape, JSON bodies, request ids, SSE output."""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import tornado.httputil
import tornado.web
from markupsafe import Markup
from tornado.iostream import StreamClosedError

from llmserver.errors import ApiError, error_body, error_type_for_status
from llmserver.sse import DONE, encode_comment, encode_event, encode_json_event, encode_spliced_events

if TYPE_CHECKING:
    from llmserver.request_log import RequestLog, RequestRecord
    from llmserver.services import Services
    from llmserver.settings import Settings

logger = logging.getLogger("llmserver.handlers")
_SAFE_REQUEST_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def bearer_token(request: tornado.httputil.HTTPServerRequest) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if there is one."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def check_api_keys(presented: str | None, accepted: Sequence[str]) -> None:
    """With API_KEYS set, a request must bear one of them (compared in constant time)."""
    if not accepted:
        return
    if presented is None or not any(hmac.compare_digest(presented.encode(), key.encode()) for key in accepted):
        raise ApiError(401, "Invalid or missing API key.", code="invalid_api_key")


class RequestIdMixin(tornado.web.RequestHandler):
    """Every response carries X-Request-Id: the request's own if it sent a sane one, else a generated one."""

    @property
    def request_id(self) -> str:
        if not hasattr(self, "_request_id"):
            given = self.request.headers.get("X-Request-Id", "")
            valid = 0 < len(given) <= 128 and set(given) <= _SAFE_REQUEST_ID_CHARS
            self._request_id = given if valid else "req_" + secrets.token_hex(12)
        return self._request_id

    def set_default_headers(self) -> None:
        # Called again by clear() before an error page, so the id survives errors too.
        self.set_header("X-Request-Id", self.request_id)

    def _request_summary(self) -> str:
        # Tornado's log lines (uncaught errors included) without the query string: /admin?token=... has a secret.
        return f"{self.request.method} {self.request.path} ({self.request.remote_ip})"


class BaseHandler(RequestIdMixin):
    """Gives handlers the services built at start-up."""

    @property
    def services(self) -> Services:
        return self.settings["services"]

    @property
    def config(self) -> Settings:
        return self.services.settings

    @property
    def request_log(self) -> RequestLog:
        return self.services.request_log

    def render_template(self, name: str, **namespace: Any) -> None:
        """Renders a Jinja2 template from templates/ (autoescaped) with the common names added."""
        template = self.settings["jinja2_env"].get_template(name)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            template.render(
                static_url=self.static_url,
                xsrf_form_html=Markup(self.xsrf_form_html()),
                xsrf_token=self.xsrf_token.decode(),
                **namespace,
            )
        )

    def upstream_key(self, required: bool = True) -> str | None:
        """The key to send upstream on this request, after the API_KEYS check.

        The server's own key wins (None is returned and the client uses it); else the caller's bearer token is
        forwarded, unless it is one of the server's API_KEYS, which never leave the server.
        """
        token = self.bearer_token()
        check_api_keys(token, self.config.api_keys)
        forwarded = None if self.config.api_keys else token
        has_upstream_key = self.services.upstream.mode != "openai" or self.config.api_key or forwarded
        if required and not has_upstream_key:
            raise ApiError(
                401,
                "No API key: send 'Authorization: Bearer <key>' or configure OPENAI_API_KEY on the server.",
                code="missing_api_key",
            )
        return forwarded

    def bearer_token(self) -> str | None:
        return bearer_token(self.request)


class ApiHandler(BaseHandler):
    """JSON API base: every error, expected or not, leaves as the OpenAI error shape, never as a traceback."""

    def check_xsrf_cookie(self) -> None:
        # API clients authenticate with bearer tokens, not cookies.
        return None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            self.set_status(exc.status)
            body = exc.body()
        elif isinstance(exc, tornado.web.HTTPError):
            message = exc.log_message % exc.args if exc.log_message and exc.args else exc.log_message
            body = error_body(message or self._reason, error_type_for_status(status_code))
        else:
            body = error_body("The server had an error while processing your request.", "server_error")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, ApiError):
            return  # an expected refusal; the request log has it
        super().log_exception(typ, value, tb)

    def send_api_error(self, error: ApiError) -> None:
        self.clear()
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error.body()))

    @property
    def body(self) -> bytes:
        return self.request.body

    def json_body(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"The request body is not valid JSON: {exc}", code="invalid_json") from None

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, ensure_ascii=False))


@tornado.web.stream_request_body
class LimitedBodyHandler(ApiHandler):
    """Reads the body as it arrives and keeps it only up to `body_limit()` bytes.

    A body whose Content-Length is over the limit is answered with 413 before it is read; one sent without a length
    is cut off by Tornado at the limit (the connection closes). Subclasses check who is asking in prepare() before
    the body is read, and only then raise the server's small default limit to theirs.
    """

    def body_limit(self) -> int:
        raise NotImplementedError

    def prepare(self) -> None:
        self._chunks: list[bytes] = []
        self._limit = self.body_limit()
        self.request.connection.set_max_body_size(self._limit)  # Tornado cuts off anything longer
        length = self.request.headers.get("Content-Length", "")
        self.declared_too_large = length.isdigit() and int(length) > self._limit

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def check_body_size(self) -> None:
        """Raises 413 for a declared length over the limit; subclasses call it in prepare(), before the body."""
        if self.declared_too_large:
            raise ApiError(413, f"The request body exceeds {self._limit} bytes.", code="request_too_large")

    @property
    def body(self) -> bytes:
        return b"".join(self._chunks)


class StaticFiles(RequestIdMixin, tornado.web.StaticFileHandler):
    """The dashboard's script and styles, with a request id and JSON errors like every other response."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        ApiHandler.write_error(self, status_code, **kwargs)  # type: ignore[arg-type]


class NotFoundHandler(ApiHandler):
    def prepare(self) -> None:
        raise ApiError(404, f"Unknown path: {self.request.method} {self.request.path}", code="not_found")


class EventStream:
    """The one SSE writer: sends events to the client, flushing each, and counts them in the request record."""

    def __init__(self, handler: tornado.web.RequestHandler, record: RequestRecord) -> None:
        self._handler = handler
        self._record = record
        self.started = False

    def start(self) -> None:
        handler = self._handler
        handler.set_header("Content-Type", "text/event-stream; charset=utf-8")
        handler.set_header("Cache-Control", "no-cache")
        handler.set_header("X-Accel-Buffering", "no")
        self.started = True

    async def _write(self, data: bytes) -> None:
        if not self.started:
            self.start()
        handler = self._handler
        handler.write(data)
        flushed = handler.flush()
        # Wait only when the socket is full (a slow reader): otherwise the bytes are already with the kernel, and
        # waiting for Tornado's callback would cost an event-loop turn per chunk. A client that leaves is noticed
        # by on_connection_close either way.
        if handler.request.connection.stream.writing():
            await flushed

    async def send(self, payload: bytes) -> None:
        """Sends one chunk: `payload` is its JSON, as bytes."""
        self._record.mark_chunk()
        await self._write(encode_event(payload))

    async def send_many(self, payloads: list[bytes]) -> None:
        """Sends several chunks in one write, for chunks that are all ready."""
        if payloads:
            await self.send_encoded(b"".join([encode_event(payload) for payload in payloads]), len(payloads))

    async def send_spliced(self, head: bytes, parts: list[bytes], tail: bytes) -> None:
        """Sends one chunk `head + part + tail` per part, in one write (see sse.encode_spliced_events)."""
        if parts:
            await self.send_encoded(encode_spliced_events(head, parts, tail), len(parts))

    async def send_encoded(self, events: bytes, count: int) -> None:
        self._record.mark_chunk(count)
        await self._write(events)

    async def send_json(self, chunk: Any) -> None:
        self._record.mark_chunk()
        await self._write(encode_json_event(chunk))

    async def send_comment(self, text: str) -> None:
        await self._write(encode_comment(text))

    async def send_error(self, error: ApiError) -> None:
        """After streaming has begun, an error is one `data: {"error": ...}` event, then [DONE]."""
        try:
            await self._write(encode_json_event(error.body()))
            await self._write(DONE)
        except StreamClosedError:
            pass

    async def done(self) -> None:
        await self._write(DONE)
