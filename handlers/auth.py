"""Who may do what: API keys and the upstream key, the admin token (bearer or signed cookie) with its XSRF policy
and its throttle, browser origins (cross-site refusal and CORS), and which proxies are believed about a client."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import tornado.httputil
import tornado.web

from llmserver.protocol.errors import ApiError

if TYPE_CHECKING:
    from llmserver.settings import Settings
    from llmserver.upstream.routing import Router

COOKIE_NAME = "llm_admin"
COOKIE_DAYS = 7
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CORS_ALLOWED_HEADERS = "Authorization, Content-Type, X-Request-Id, OpenAI-Organization, OpenAI-Project"


# Keys ------------------------------------------------------------------------------------------------------------


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


def upstream_key(
    request: tornado.httputil.HTTPServerRequest, settings: Settings, upstreams: Router, required: bool = True
) -> str | None:
    """The key to send upstream on this request, after the API_KEYS check.

    An upstream's own key wins (the caller's is not sent to it); else the caller's bearer token is forwarded,
    unless it is one of the server's API_KEYS, which never leave the server.
    """
    token = bearer_token(request)
    check_api_keys(token, settings.api_keys)
    forwarded = None if settings.api_keys else token
    if required and not (upstreams.has_own_key or forwarded):
        raise ApiError(
            401,
            "No API key: send 'Authorization: Bearer <key>' or configure OPENAI_API_KEY on the server.",
            code="missing_api_key",
        )
    return forwarded


# Origins ---------------------------------------------------------------------------------------------------------


def normalised_origin(origin: str) -> str | None:
    """`scheme://host[:port]` in lower case, without a default port; None for anything that is not an origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != _DEFAULT_PORTS[parts.scheme] else "")


def own_origin(request: tornado.httputil.HTTPServerRequest) -> str | None:
    return normalised_origin(f"{request.protocol}://{request.host}")


def is_same_origin(request: tornado.httputil.HTTPServerRequest, origin: str) -> bool:
    """True when `origin` (a browser's Origin header) is this server as the browser reached it, scheme included."""
    mine = own_origin(request)
    return mine is not None and normalised_origin(origin) == mine


def _cors_allowed(origin: str, settings: Settings) -> bool:
    allowed = settings.cors_origins
    return "*" in allowed or normalised_origin(origin) in {normalised_origin(o) for o in allowed}


def check_cross_site(request: tornado.httputil.HTTPServerRequest, settings: Settings) -> None:
    """Refuses requests a browser makes for another site's page (a form posting to the API would spend the
    server's key): a foreign Origin, unless CORS_ORIGINS allows it. Clients that are not browsers send none."""
    origin = request.headers.get("Origin")
    if origin is None or is_same_origin(request, origin) or _cors_allowed(origin, settings):
        return
    raise ApiError(
        403,
        "Cross-site requests from browsers are refused; add the page's origin to CORS_ORIGINS to allow it.",
        code="cross_site_refused",
    )


def cors_headers(request: tornado.httputil.HTTPServerRequest, settings: Settings) -> dict[str, str]:
    origin = request.headers.get("Origin")
    if origin is None or is_same_origin(request, origin) or not _cors_allowed(origin, settings):
        return {}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin", "Access-Control-Expose-Headers": "X-Request-Id"}


def cors_preflight_headers(
    request: tornado.httputil.HTTPServerRequest, settings: Settings, methods: Sequence[str]
) -> dict[str, str]:
    headers = cors_headers(request, settings)
    headers["Allow"] = ", ".join([*methods, "OPTIONS"])
    if headers.get("Access-Control-Allow-Origin"):
        headers["Access-Control-Allow-Methods"] = headers["Allow"]
        headers["Access-Control-Allow-Headers"] = _CORS_ALLOWED_HEADERS
        headers["Access-Control-Max-Age"] = "600"
    return headers


# Proxies ---------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _networks(trusted: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(network, strict=False) for network in trusted)


def _is_trusted(address: str, trusted: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in _networks(trusted))


def apply_forwarded_headers(request: tornado.httputil.HTTPServerRequest, trusted: tuple[str, ...]) -> None:
    """Believes X-Forwarded-For and X-Forwarded-Proto only from TRUSTED_PROXIES: the client is the nearest address
    in the chain that is not a trusted proxy. From anyone else the headers are ignored."""
    if not trusted or not _is_trusted(request.remote_ip, trusted):
        return
    chain = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",") if part.strip()]
    for address in reversed(chain):
        try:
            ipaddress.ip_address(address)
        except ValueError:
            break  # a forged or garbled entry: believe nothing beyond it
        request.remote_ip = address
        if not _is_trusted(address, trusted):
            break
    protocol = request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip().lower()
    if protocol in ("http", "https"):
        request.protocol = protocol


# The admin token -------------------------------------------------------------------------------------------------


class AdminAccess(tornado.web.RequestHandler):
    """Mixin for admin handlers (placed before the handler's base class): the token as a bearer token or as the
    signed cookie set from it, the one XSRF policy, and the throttle on wrong tokens."""

    @property
    def admin_token(self) -> str:
        return self.settings["services"].admin_token

    def token_matches(self, candidate: str | None) -> bool:
        return bool(candidate) and hmac.compare_digest(candidate.encode(), self.admin_token.encode())

    def _cookie_value(self) -> str:
        # A digest of the token: a new token ends every old session.
        return hashlib.sha256(self.admin_token.encode()).hexdigest()

    def remember_admin(self) -> None:
        self.set_signed_cookie(
            COOKIE_NAME, self._cookie_value(), expires_days=COOKIE_DAYS, httponly=True, samesite="Strict", path="/"
        )

    def has_bearer_token(self) -> bool:
        return self.token_matches(bearer_token(self.request))

    def has_admin_cookie(self) -> bool:
        value = self.get_signed_cookie(COOKIE_NAME, max_age_days=COOKIE_DAYS)
        return value is not None and hmac.compare_digest(value, self._cookie_value().encode())

    def get_current_user(self) -> str | None:
        if self.has_bearer_token() or self.has_admin_cookie():
            return "admin"
        if bearer_token(self.request) is not None:
            self.token_failed()  # a wrong token presented: a guess
        return None

    def check_token_throttle(self, token: str | None = None) -> None:
        """Refuses (429) a client that has presented too many wrong tokens lately, unless this request signs in (the
        right token, here `token` or the bearer token, or the cookie): throttling the right token too let one
        stranger behind the operators' address (a proxy) keep every operator out."""
        if self.token_matches(token) or self.has_bearer_token() or self.has_admin_cookie():
            return
        wait = self.settings["services"].login_throttle.retry_after(self.request.remote_ip or "")
        if wait is not None:
            raise ApiError(
                429,
                f"Too many wrong admin tokens from this address; try again in {wait} s.",
                code="too_many_attempts",
                headers={"Retry-After": str(wait)},
            )

    def token_failed(self) -> None:
        self.settings["services"].login_throttle.failed(self.request.remote_ip or "")

    def acts_with_admin_cookie(self) -> bool:
        """True when this request's authority is the cookie (so the XSRF policy applies), not the bearer token."""
        return not self.has_bearer_token() and self.has_admin_cookie()
