"""Who may use the admin dashboard: the admin token, as a bearer token or a signed cookie set from it.

A cookie alone is not enough for changes: cookie-authenticated requests must also pass Tornado's XSRF check
(the `X-XSRFToken` header), so another site cannot make an operator's browser act for it.
"""

from __future__ import annotations

import hashlib
import hmac

import tornado.web

from .base import bearer_token

COOKIE_NAME = "llm_admin"
COOKIE_DAYS = 7


class AdminAccess(tornado.web.RequestHandler):
    """Mixin for admin handlers (placed before the handler's base class)."""

    @property
    def admin_token(self) -> str:
        return self.settings["services"].admin_token

    def token_matches(self, candidate: str | None) -> bool:
        return bool(candidate) and hmac.compare_digest(candidate.encode(), self.admin_token.encode())

    def _cookie_value(self) -> str:
        # A digest of the token: a new token (a restart without ADMIN_TOKEN) ends every old session.
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
        return None

    def check_xsrf_cookie(self) -> None:
        # Scripts with the bearer token need no XSRF token: no browser sends that header on its own.
        if self.has_bearer_token():
            return
        # Tornado's own check, by name: the API base class that admin handlers also derive from turns it off.
        tornado.web.RequestHandler.check_xsrf_cookie(self)
