"""The operator's upstreams (UPSTREAMS_FILE, JSON): the LLM servers the relay may call, in order of preference, each
with its own key, model names, timeouts and stream limit. Checked at start: a file with a problem refuses the start
with one message naming the file and the problem. Without the file, OPENAI_BASE_URL/OPENAI_API_KEY are one upstream.

    {"upstreams": [
      {"name": "openai", "base_url": "https://api.openai.com/v1", "api_key": "${OPENAI_API_KEY}",
       "first_token_timeout": 2.5},
      {"name": "groq", "base_url": "https://api.groq.com/openai/v1", "api_key": "${GROQ_API_KEY}",
       "models": {"gpt-4o-mini": "llama-3.3-70b-versatile", "*": "llama-3.1-8b-instant"}}
    ]}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..operator_files import OperatorFileError, expand, expand_all, read_json_file

UPSTREAM_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_SECONDS = {"type": "number", "exclusiveMinimum": 0, "maximum": 3600}

FILE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["upstreams"],
    "properties": {
        "upstreams": {
            "type": "array",
            "minItems": 1,
            "maxItems": 32,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "base_url"],
                "properties": {
                    "name": {"type": "string", "pattern": UPSTREAM_NAME},
                    "base_url": {"type": "string", "pattern": r"^(https?://|\$\{)"},
                    "api_key": {"type": "string"},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "models": {"type": "object", "additionalProperties": {"type": "string", "minLength": 1}},
                    "connect_timeout": _SECONDS,
                    "read_timeout": _SECONDS,
                    "first_token_timeout": _SECONDS,
                    "max_streams": {"type": "integer", "minimum": 1},
                },
            },
        }
    },
}


class UpstreamsFileError(OperatorFileError):
    pass


@dataclass(frozen=True)
class UpstreamConfig:
    """One upstream. Unset timeouts and limits are the server's settings (CONNECT_TIMEOUT, READ_TIMEOUT, MAX_STREAMS);
    an unset `first_token_timeout` means only the request's own FIRST_TOKEN_TIMEOUT applies."""

    name: str
    base_url: str | None  # None: the offline responder
    api_key: str | None = field(default=None, repr=False)  # None: the caller's key is forwarded
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    models: dict[str, str] = field(default_factory=dict)  # the request's model -> this upstream's ("*": any other)
    connect_timeout: float | None = None
    read_timeout: float | None = None
    first_token_timeout: float | None = None
    max_streams: int | None = None
    # Without a key of its own, an upstream of the file is called with the caller's key, or with none (a local
    # server); the one upstream OPENAI_BASE_URL names needs one or the other (a request with neither: 401 at once).
    needs_key: bool = False

    def model_for(self, requested: str) -> str:
        return self.models.get(requested) or self.models.get("*") or requested


def load_upstreams_file(path: str) -> tuple[UpstreamConfig, ...]:
    """The file's upstreams, in order; raises UpstreamsFileError naming the file and the problem."""
    data = read_json_file(path, FILE_SCHEMA, UpstreamsFileError)
    upstreams = []
    seen: set[str] = set()
    for number, entry in enumerate(data["upstreams"]):
        name = entry["name"]
        where = f"{path}: upstream {name!r}"
        if name in seen:
            raise UpstreamsFileError(f"{path}: at upstreams/{number}: another upstream is named {name!r} already.")
        seen.add(name)
        base_url = expand(entry["base_url"], f"{where} base_url", UpstreamsFileError)
        if not base_url.startswith(("http://", "https://")):
            raise UpstreamsFileError(f"{where}: base_url must start with http:// or https://.")
        api_key = expand(entry["api_key"], f"{where} api_key", UpstreamsFileError) if "api_key" in entry else None
        upstreams.append(
            UpstreamConfig(
                name,
                base_url,
                api_key or None,
                expand_all(entry.get("headers", {}), f"{where} headers", UpstreamsFileError),
                dict(entry.get("models", {})),
                entry.get("connect_timeout"),
                entry.get("read_timeout"),
                entry.get("first_token_timeout"),
                entry.get("max_streams"),
            )
        )
    return tuple(upstreams)
