"""The built-in tools: `search_knowledge_base` (the same retrieval as the RAG endpoint, for the model on
/chat/completions to use when it decides to) and `current_time` (in any IANA time zone)."""

from __future__ import annotations

import datetime
import functools
import json
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from ..knowledge.query import single_query
from ..knowledge.retriever import Retriever
from .registry import Tool, ToolFailure

SEARCH_KNOWLEDGE_BASE = "search_knowledge_base"
CURRENT_TIME = "current_time"


@functools.cache
def _zones() -> dict[str, str]:
    """Every IANA zone by its lower-case name and by its city ("asia/tokyo" and "tokyo" -> "Asia/Tokyo"), read once:
    listing them walks the time zone database."""
    zones: dict[str, str] = {}
    for zone in sorted(available_timezones(), reverse=True):  # "Asia/Tokyo" before "Japan"-style aliases
        zones[zone.lower()] = zone
        zones.setdefault(zone.rsplit("/", 1)[-1].lower(), zone)
    return zones


def find_time_zone(place: str) -> str | None:
    """An IANA zone for a zone name or a city in one ("Tokyo" -> "Asia/Tokyo", "new york" -> "America/New_York")."""
    return _zones().get(place.strip().replace(" ", "_").lower()) if place.strip() else None


class BuiltinTools:
    name = "builtin"

    def __init__(self, retriever: Retriever) -> None:
        self._retriever = retriever
        self._tools = [
            Tool(
                SEARCH_KNOWLEDGE_BASE,
                "Search the knowledge base of this service for passages that answer a question. Use it for "
                "questions about the service, its products, prices, opening hours and policies.",
                {
                    "type": "object",
                    "properties": {"query": {"type": "string", "minLength": 1, "description": "the question"}},
                    "required": ["query"],
                    "additionalProperties": False,
                },
                "builtin",
                self.search_knowledge_base,
            ),
            Tool(
                CURRENT_TIME,
                "The current date and time in a time zone (an IANA name such as Asia/Tokyo, or a city).",
                {
                    "type": "object",
                    "properties": {
                        "timezone": {"type": "string", "description": "IANA time zone or city; UTC if omitted"}
                    },
                    "additionalProperties": False,
                },
                "builtin",
                self.current_time,
            ),
        ]

    def tools(self) -> list[Tool]:
        return list(self._tools)

    def state(self) -> dict[str, Any]:
        return {"source": "builtin", "reachable": True, "tools": len(self._tools)}

    async def reload(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def search_knowledge_base(self, arguments: dict[str, Any]) -> str:
        result = await self._retriever.retrieve(single_query(arguments["query"]))
        passages = [
            {"source": p.id, "title": p.title, "section": p.heading or None, "text": p.text} for p in result.injected
        ]
        if not passages:
            return json.dumps(
                {"passages": [], "note": "nothing in the knowledge base answers this"}, ensure_ascii=False
            )
        return json.dumps({"passages": passages}, ensure_ascii=False)

    async def current_time(self, arguments: dict[str, Any]) -> str:
        asked = arguments.get("timezone") or "UTC"
        zone_name = find_time_zone(asked)
        if zone_name is None:
            raise ToolFailure(f"unknown time zone {asked!r}: give an IANA name such as Europe/Amsterdam")
        try:
            now = datetime.datetime.now(ZoneInfo(zone_name))
        except ZoneInfoNotFoundError:
            raise ToolFailure(f"unknown time zone {asked!r}") from None
        return json.dumps(
            {
                "timezone": zone_name,
                "iso": now.isoformat(timespec="seconds"),
                "spoken": now.strftime("%A %d %B %Y, %H:%M"),
            }
        )
