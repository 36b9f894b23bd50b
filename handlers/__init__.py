"""Tornado request handlers, one module per feature; each module ends in its `default_handlers` routes."""

from __future__ import annotations

from . import audio, completions, models, rag

default_handlers = [
    *completions.default_handlers,
    *models.default_handlers,
    *rag.default_handlers,
    *audio.default_handlers,
]
