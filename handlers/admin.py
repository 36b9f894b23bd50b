"""GET /admin: the dashboard page, or the token form for a browser without a valid token or cookie."""

from __future__ import annotations

from .admin_access import AdminAccess
from .base import BaseHandler

# The page runs only its own script and styles, and talks only to this server.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class AdminPageHandler(AdminAccess, BaseHandler):
    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")

    def get(self) -> None:
        token = self.get_query_argument("token", None)
        if token is not None:
            # The URL printed at start: exchange the token for a cookie and drop it from the address bar.
            return self._log_in(token)
        if self.current_user is None:
            return self._token_form()
        self.render_template("admin.html")

    def post(self) -> None:
        self._log_in(self.get_body_argument("token", "").strip())

    def _log_in(self, token: str) -> None:
        if self.token_matches(token):
            self.remember_admin()
            self.redirect("/admin", status=303)
        else:
            self._token_form(error="That token is not valid.", status=401)

    def _token_form(self, error: str | None = None, status: int = 200) -> None:
        self.set_status(status)
        self.render_template("login.html", error=error)


default_handlers = [
    (r"/admin/?", AdminPageHandler),
]
