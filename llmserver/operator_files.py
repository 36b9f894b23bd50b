"""What the operator's JSON files (the knowledge base, the tools file, the upstreams file) share: read whole and
parsed with the one JSON parser, checked against a JSON schema where they have one, and `${NAME}` in their values read
from the server's environment, so secrets stay out of the files. Every problem is one message naming the file, where
in it, and what is wrong."""

from __future__ import annotations

import os
import re
from typing import Any

import jsonschema

from .protocol.errors import ServiceError
from .protocol.json_body import InvalidJson, parse_json

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class OperatorFileError(ServiceError):
    """A file the server cannot use; the message names the file and the problem."""


def read_json_file(path: str, schema: dict[str, Any] | None, error: type[ServiceError]) -> Any:
    """The file's JSON, valid against `schema` (if any); raises `error` naming the file and the problem."""
    try:
        with open(path, "rb") as handle:
            data = parse_json(handle.read(), what=path)
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror}).") from None
    except InvalidJson as exc:
        raise error(str(exc)) from None
    if schema is not None:
        check_schema(data, schema, path, error)
    return data


def check_schema(data: Any, schema: dict[str, Any], where: str, error: type[ServiceError]) -> None:
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as exc:
        path = "/".join(str(part) for part in exc.absolute_path) or "the top level"
        raise error(f"{where}: at {path}: {exc.message}") from None


def expand(text: str, where: str, error: type[OperatorFileError]) -> str:
    """`text` with each `${NAME}` replaced by the environment variable's value; a variable that is not set is an
    error naming `where` and the variable."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise error(f"{where} uses ${{{name}}}, which is not set in the server's environment.")
        return os.environ[name]

    return _VARIABLE.sub(value, text)


def expand_all(values: dict[str, str], where: str, error: type[OperatorFileError]) -> dict[str, str]:
    return {key: expand(text, f"{where} ({key})", error) for key, text in values.items()}
