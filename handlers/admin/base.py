"""The base of the admin JSON API that the dashboard uses (and scripts can, with `Authorization: Bearer <admin
token>`): the admin token checked before any body is read, and changes run off the event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import tornado.ioloop

from llmserver.protocol.errors import ApiError

from ..auth import AdminAccess
from ..base import ApiHandler

T = TypeVar("T")
ADMIN_JSON_BYTES = 64 * 1024 * 1024  # a whole knowledge.json can be imported
# Path arguments are checked by the services (the clip-name rule lives in the audio library): a route only says
# where one ends.
ONE = r"([^/]+)"


class AdminApiHandler(AdminAccess, ApiHandler):
    def body_limit(self) -> int:
        return max(ADMIN_JSON_BYTES, self.config.max_body_bytes)

    def prepare(self) -> None:
        # Before the body is read: a caller without the token is turned away without sending it.
        self.check_token_throttle()
        if self.current_user is None:
            raise ApiError(401, "Admin token required (cookie or 'Authorization: Bearer <token>').", code="admin_token")
        super().prepare()

    async def in_worker(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs a change in a worker thread (re-indexing, decoding audio) so that streams keep flowing."""
        loop = tornado.ioloop.IOLoop.current()
        try:
            return await loop.run_in_executor(None, lambda: function(*args, **kwargs))
        except OSError as exc:
            raise ApiError(500, f"Could not save the change: {exc.strerror}.", type="server_error") from None
