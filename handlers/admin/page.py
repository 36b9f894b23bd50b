"""GET /admin: the dashboard page, or the token form for a browser without a valid token or cookie."""

from __future__ import annotations

import tornado.httputil

from llmserver.endpoints import ENDPOINTS
from llmserver.protocol.errors import ApiError

from ..auth import AdminAccess, check_cross_site
from ..base import PageHandler

# The page runs only its own scripts and styles, and talks only to this server.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class AdminPageHandler(AdminAccess, PageHandler):
    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")  # "no-referrer" would make the page's own Origin "null"
        self.set_header("Cache-Control", "no-store")

    def acts_with_admin_cookie(self) -> bool:
        return False  # the sign-in form authenticates with the token it carries, never with a cookie

    def get(self) -> None:
        token = self.get_query_argument("token", None)
        if token is not None:
            # The URL printed at start: exchange the token for a cookie and drop it from the address bar.
            return self._log_in(token)
        if self.current_user is None:
            return self._token_form()
        self.render_template("admin.html", endpoints=ENDPOINTS)

    def post(self) -> None:
        check_cross_site(self.request, self.config)
        fields: dict[str, list[bytes]] = {}
        try:
            tornado.httputil.parse_body_arguments(
                self.request.headers.get("Content-Type", ""), self.body, fields, {}, self.request.headers
            )
        except tornado.httputil.HTTPInputError:
            raise ApiError(400, "The sign-in form could not be read.", code="invalid_form") from None
        token = fields.get("token", [b""])[0].decode("utf-8", "replace").strip()
        self._log_in(token)

    def _log_in(self, token: str) -> None:
        self.check_token_throttle(token)
        if self.token_matches(token):
            self.remember_admin()
            self.redirect("/admin", status=303)
        else:
            self.token_failed()
            self._token_form(error="That token is not valid.", status=401)

    def _token_form(self, error: str | None = None, status: int = 200) -> None:
        self.set_status(status)
        self.render_template("login.html", error=error)


default_handlers = [
    (r"/admin/?", AdminPageHandler),
]
