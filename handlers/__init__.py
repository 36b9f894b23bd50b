"""Tornado request handlers, one module per feature; each module ends in its `default_handlers` routes."""

from __future__ import annotations

from . import admin, completions, models

default_handlers = [
    *completions.default_handlers,
    *models.default_handlers,
    *admin.default_handlers,
]
