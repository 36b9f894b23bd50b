"""Base handlers: every handler has the services built at start-up, a request id, and a body read within its own
limit. API handlers answer every error in OpenAI's JSON shape; pages answer a page in the dashboard's style."""

from __future__ import annotations

import json
import logging
import math
import secrets
from typing import TYPE_CHECKING, Any

import tornado.web
from tornado.iostream import StreamClosedError

from llmserver.protocol.errors import ApiError, ServiceError, as_api_error
from llmserver.protocol.json_body import parse_json

from .auth import check_cross_site, cors_headers, cors_preflight_headers

if TYPE_CHECKING:
    from llmserver.request_log import RequestLog
    from llmserver.services import Services
    from llmserver.settings import Settings

logger = logging.getLogger("llmserver.handlers")
_SAFE_REQUEST_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
DEFAULT_BODY_BYTES = 64 * 1024  # for handlers that take no more than a small form
INTERNAL_ERROR = "The server had an error while processing your request."


class RequestContext(tornado.web.RequestHandler):
    """The services, the request id, and what every error response needs to know."""

    @property
    def services(self) -> Services:
        return self.settings["services"]

    @property
    def config(self) -> Settings:
        return self.services.settings

    @property
    def request_log(self) -> RequestLog:
        return self.services.request_log

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

    def acts_with_admin_cookie(self) -> bool:
        return False  # see AdminAccess

    def check_xsrf_cookie(self) -> None:
        """The one XSRF policy: a request that acts with the admin cookie must carry the page's XSRF token in the
        X-XSRFToken header (never in the URL). Other requests carry no ambient authority a foreign page could
        borrow (API callers and admin scripts present bearer tokens; strangers are refused), so they need none."""
        if not self.acts_with_admin_cookie():
            return
        if not self.request.headers.get("X-XSRFToken"):
            raise ApiError(403, "The X-XSRFToken header is required with the admin cookie.", code="xsrf")
        try:
            super().check_xsrf_cookie()
        except tornado.web.HTTPError:
            raise ApiError(403, "The X-XSRFToken header does not match the XSRF cookie.", code="xsrf") from None

    def body_unread(self) -> bool:
        """True before Tornado has finished reading the request (in prepare(), or while a body arrives): an answer
        given now makes Tornado close the connection afterwards."""
        return not getattr(self.request.connection, "_read_finished", True)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, (ApiError, ServiceError)):
            return  # an expected refusal; the request log or the access log has it
        if isinstance(value, StreamClosedError) and self._finished:
            return  # the client left after its answer (a refused body it was still sending)
        super().log_exception(typ, value, tb)

    def error_for(self, status_code: int, kwargs: dict[str, Any]) -> ApiError:
        """The error to show for write_error's arguments: ours as it is, Tornado's in words, anything else as 500."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        error = as_api_error(exc) if exc is not None else None
        if error is not None:
            return error
        if isinstance(exc, tornado.web.HTTPError) or exc is None:
            message = getattr(exc, "log_message", None)
            if message and getattr(exc, "args", None):
                message = message % exc.args
            return ApiError(status_code, message or self._reason)
        return ApiError(500, INTERNAL_ERROR, type="server_error")

    def begin_error_response(self, error: ApiError) -> None:
        self.set_status(error.status)
        for name, value in error.headers.items():
            self.set_header(name, value)
        if self.body_unread():
            # Tornado closes the connection rather than read the rest of the body; say so, so that a client's
            # connection pool does not send its next request into a closed connection.
            self.set_header("Connection", "close")


class JsonErrors(RequestContext):
    """Errors in OpenAI's JSON shape, expected or not, never a traceback."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = self.error_for(status_code, kwargs)
        self.begin_error_response(error)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error.body()))


class PageErrors(RequestContext):
    """Errors as a page in the dashboard's style."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = self.error_for(status_code, kwargs)
        self.begin_error_response(error)
        self.render_template("error.html", status=error.status, message=error.message)

    def render_template(self, name: str, **namespace: Any) -> None:
        """Renders a Jinja2 template from templates/ (autoescaped) with the common names added."""
        template = self.settings["jinja2_env"].get_template(name)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            template.render(
                static_url=self.static_url,
                xsrf_token=self.xsrf_token.decode(),
                **namespace,
            )
        )


# A body over its limit by no more than this is read and dropped, and the 413 sent when it has all arrived: the
# connection then stays usable, and a client still sending never meets a reset instead of the answer. Past it, the
# 413 goes at once and the connection closes.
DISCARD_BYTES = 4 * 1024 * 1024


@tornado.web.stream_request_body
class BodyLimit(tornado.web.RequestHandler):
    """Reads the body as it arrives and keeps it only up to `body_limit()` bytes; reading a longer one (`body`)
    raises a 413 in the handler's error shape. Handlers check who is asking in prepare() before calling this
    one's, so strangers are answered before they send a body."""

    def body_limit(self) -> int:
        return DEFAULT_BODY_BYTES

    def prepare(self) -> None:
        self._chunks: list[bytes] = []
        self._received = 0
        self._too_large = False
        length = self.request.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.body_limit() + DISCARD_BYTES:
            raise self.too_large()

    def too_large(self) -> ApiError:
        return ApiError(413, f"The request body exceeds {self.body_limit()} bytes.", code="request_too_large")

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        self._received += len(chunk)
        if self._received <= self.body_limit():
            self._chunks.append(chunk)
            return
        self._chunks = []
        self._too_large = True
        if self._received > self.body_limit() + DISCARD_BYTES:
            error = self.too_large()
            self.send_error(error.status, exc_info=(type(error), error, None))

    @property
    def body(self) -> bytes:
        if self._too_large:
            raise self.too_large()
        return b"".join(self._chunks)


class ApiHandler(JsonErrors, BodyLimit):
    """JSON API base: refuses cross-site requests from browsers (unless CORS_ORIGINS allows the origin), answers
    CORS preflights, parses bodies with the one JSON parser."""

    def prepare(self) -> None:
        check_cross_site(self.request, self.config)
        for name, value in cors_headers(self.request, self.config).items():
            self.set_header(name, value)
        super().prepare()

    def options(self, *args: str) -> None:
        for name, value in cors_preflight_headers(self.request, self.config, self._allowed_methods()).items():
            self.set_header(name, value)
        self.set_status(204)
        self.finish()

    def _allowed_methods(self) -> list[str]:
        def implemented(method: str) -> bool:
            return getattr(type(self), method.lower()) is not getattr(tornado.web.RequestHandler, method.lower())

        return [method for method in self.SUPPORTED_METHODS if method != "OPTIONS" and implemented(method)]

    def json_body(self) -> Any:
        return parse_json(self.body)

    def number_argument(self, name: str, what: str = "a number") -> float | None:
        """A finite number from the query string (None when absent): NaN, infinities and words are a 400."""
        value = self.get_query_argument(name, "")
        if not value:
            return None
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ApiError(400, f"'{name}' must be {what}.", param=name, code="invalid_value")
        return number

    def count_argument(self, name: str, default: int, most: int) -> int:
        """A count from the query string, at least 1 and at most `most`."""
        number = self.number_argument(name, "a whole number")
        return default if number is None else max(1, min(int(number), most))

    def json_object(self) -> dict[str, Any]:
        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_body")
        return body

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, ensure_ascii=False))

    def send_api_error(self, error: ApiError) -> None:
        self.clear()
        self.begin_error_response(error)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error.body()))


class PageHandler(PageErrors, BodyLimit):
    """An HTML page of the dashboard."""


class StaticFiles(JsonErrors, BodyLimit, tornado.web.StaticFileHandler):
    """The dashboard's scripts and styles, with a request id and JSON errors like every other response."""

    def parse_url_path(self, url_path: str) -> str:
        if any(ord(character) < 32 for character in url_path):
            raise tornado.web.HTTPError(404)  # a NUL or control character can name no file
        return super().parse_url_path(url_path)


class NotFoundHandler(ApiHandler):
    def prepare(self) -> None:
        raise ApiError(404, f"Unknown path: {self.request.method} {self.request.path}", code="not_found")
