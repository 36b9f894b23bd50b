"""The admin dashboard: its page, its live log (a WebSocket) and its JSON API, one module per feature, each ending
in its `default_handlers` routes."""

from __future__ import annotations

from . import clips, history, knowledge, live_log, page, status, tools

default_handlers = [
    *page.default_handlers,
    *live_log.default_handlers,
    *status.default_handlers,
    *knowledge.default_handlers,
    *clips.default_handlers,
    *tools.default_handlers,
    *history.default_handlers,
]
