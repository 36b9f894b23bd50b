"""/admin/api/history: finished requests from the durable history, paged and filtered."""

from __future__ import annotations

from llmserver.history import PAGE_LIMIT
from llmserver.protocol.errors import ApiError

from .base import ONE, AdminApiHandler


class HistoryHandler(AdminApiHandler):
    """GET /admin/api/history?before=&limit=&endpoint=&outcome=&since=&until=&q=: finished requests, newest first;
    `before` is the `started_at` of the last record of the previous page."""

    async def get(self) -> None:
        def number(name: str) -> float | None:
            return self.number_argument(name, "a number (seconds since 1970)")

        limit = self.count_argument("limit", default=50, most=PAGE_LIMIT)
        page = await self.in_worker(
            self.services.history.page,
            before=number("before"),
            limit=limit,
            endpoint=self.get_query_argument("endpoint", "") or None,
            outcome=self.get_query_argument("outcome", "") or None,
            since=number("since"),
            until=number("until"),
            text=self.get_query_argument("q", "") or None,
        )
        more = len(page) == limit  # a full page: there may be older ones
        self.write_json({"records": page, "before": page[-1]["started_at"] if page and more else None})


class HistoryRecordHandler(AdminApiHandler):
    """GET /admin/api/history/{key}: one request's whole record."""

    async def get(self, key: str) -> None:
        record = await self.in_worker(self.services.history.get, key)
        if record is None:
            raise ApiError(404, f"No request {key!r} in the history.", param="key", code="not_found")
        self.write_json(record)


default_handlers = [
    (r"/admin/api/history", HistoryHandler),
    (rf"/admin/api/history/{ONE}", HistoryRecordHandler),
]
