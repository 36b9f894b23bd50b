"""The operator's tools file (TOOLS_FILE, JSON): HTTP webhook tools and MCP servers, checked against a JSON schema
at start and on reload. `${NAME}` in a URL, header or environment value is read from the server's environment, so
secrets stay out of the file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from ..operator_files import OperatorFileError, check_schema, read_json_file
from ..operator_files import expand as expand_variables
from ..operator_files import expand_all as expand_all_variables

TOOL_NAME = r"^[A-Za-z0-9_-]{1,64}$"

FILE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "tools": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "description", "url"],
                "properties": {
                    "name": {"type": "string", "pattern": TOOL_NAME},
                    "description": {"type": "string", "minLength": 1},
                    "parameters": {"type": "object"},
                    "url": {"type": "string", "pattern": r"^https?://"},
                    "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE"]},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
                    "filler": {
                        "oneOf": [
                            {"type": "string", "minLength": 1, "maxLength": 300},
                            {
                                "type": "object",
                                "minProperties": 1,
                                "propertyNames": {"pattern": "^[a-z]{2}$"},
                                "additionalProperties": {"type": "string", "minLength": 1, "maxLength": 300},
                            },
                        ]
                    },
                },
            },
        },
        "mcp_servers": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": TOOL_NAME},
                    "url": {"type": "string", "pattern": r"^https?://"},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "command": {"type": "string", "minLength": 1},
                    "args": {"type": "array", "items": {"type": "string"}},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}},
                    "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
                },
                "oneOf": [{"required": ["url"]}, {"required": ["command"]}],
            },
        },
    },
}
DEFAULT_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


class ToolsFileError(OperatorFileError):
    pass


@dataclass(frozen=True)
class WebhookConfig:
    name: str
    description: str
    parameters: dict[str, Any]
    url: str
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    filler: dict[str, str] = field(default_factory=dict)  # by language ("en" for an untagged one)


@dataclass(frozen=True)
class McpServerConfig:
    name: str
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None


@dataclass(frozen=True)
class ToolsConfig:
    webhooks: tuple[WebhookConfig, ...] = ()
    mcp_servers: tuple[McpServerConfig, ...] = ()


def _expand(text: str, where: str) -> str:
    return expand_variables(text, where, ToolsFileError)


def _expand_all(values: dict[str, str], where: str) -> dict[str, str]:
    return expand_all_variables(values, where, ToolsFileError)


def load_tools_file(path: str | None) -> ToolsConfig:
    """The tools file's contents; no file is no tools. Raises ToolsFileError naming the file and the problem."""
    if not path or not os.path.exists(path):
        return ToolsConfig()
    return parse_tools(read_json_file(path, FILE_SCHEMA, ToolsFileError), path)


def parse_tools(data: Any, where: str) -> ToolsConfig:
    check_schema(data, FILE_SCHEMA, where, ToolsFileError)
    webhooks = []
    for entry in data.get("tools", []):
        parameters = entry.get("parameters", DEFAULT_PARAMETERS)
        try:
            jsonschema.validators.validator_for(parameters).check_schema(parameters)
        except jsonschema.SchemaError as exc:
            raise ToolsFileError(
                f"{where}: tool {entry['name']!r}: its parameters are not a JSON schema ({exc.message})"
            ) from None
        webhooks.append(
            WebhookConfig(
                entry["name"],
                entry["description"],
                parameters,
                _expand(entry["url"], f"tool {entry['name']!r} url"),
                entry.get("method", "POST"),
                _expand_all(entry.get("headers", {}), f"tool {entry['name']!r} headers"),
                entry.get("timeout"),
                {"en": entry["filler"]} if isinstance(entry.get("filler"), str) else dict(entry.get("filler", {})),
            )
        )
    servers = [
        McpServerConfig(
            entry["name"],
            _expand(entry["url"], f"MCP server {entry['name']!r} url") if "url" in entry else None,
            _expand_all(entry.get("headers", {}), f"MCP server {entry['name']!r} headers"),
            entry.get("command"),
            tuple(entry.get("args", ())),
            _expand_all(entry.get("env", {}), f"MCP server {entry['name']!r} env"),
            entry.get("timeout"),
        )
        for entry in data.get("mcp_servers", [])
    ]
    names = [w.name for w in webhooks]
    if len(names) != len(set(names)):
        raise ToolsFileError(f"{where}: two webhook tools share a name.")
    return ToolsConfig(tuple(webhooks), tuple(servers))
