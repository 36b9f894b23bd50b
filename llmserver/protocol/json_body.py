"""The one JSON parser for everything clients and operators send: request bodies, admin edits, imported files.

It refuses, with a message naming the problem and where it is, what would break later on: bytes that are not
UTF-8, lone surrogates (`"\\ud800"`: valid JSON, but text that cannot be encoded again, so it could never be sent
upstream, logged or shown), NaN and Infinity (not JSON) and numbers too large for a float, and nesting deeper than
`max_depth` (Python's own recursion would otherwise fail somewhere downstream).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import ServiceError

MAX_DEPTH = 64
# A surrogate can only enter through a \uD800-\uDFFF escape: the bytes themselves are decoded strictly.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class InvalidJson(ServiceError):
    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message, field=field, status=400, code="invalid_json")


def _refuse_constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not a JSON number; send a finite number or null.")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJson(f"The number {text[:40]} is out of range: numbers must be finite.")
    return value


def parse_json(raw: bytes | str, *, what: str = "The request body", max_depth: int = MAX_DEPTH) -> Any:
    """Parses `raw`; raises InvalidJson (a 400) saying what is wrong and where."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")  # strict: encoded surrogates and stray bytes are refused here
        except UnicodeDecodeError as exc:
            raise InvalidJson(f"{what} is not valid UTF-8 (at byte {exc.start}).") from None
        may_hold_surrogates = _SURROGATE_ESCAPE.search(raw) is not None
    else:
        text = raw
        may_hold_surrogates = True
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except InvalidJson:
        raise
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"{what} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).") from None
    except RecursionError:
        raise InvalidJson(f"{what} is nested too deeply (the limit is {max_depth} levels).") from None
    except ValueError:  # an integer of thousands of digits
        raise InvalidJson(f"{what} holds a number too long to read.") from None
    check_structure(value, what=what, max_depth=max_depth, surrogates=may_hold_surrogates)
    return value


def _path(parts: tuple[Any, ...]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def check_structure(value: Any, *, what: str, max_depth: int = MAX_DEPTH, surrogates: bool = True) -> None:
    """Refuses nesting deeper than `max_depth` and (with `surrogates`) strings that are not valid Unicode."""
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(value, 1, ())]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                raise InvalidJson(f"{what} is nested too deeply (the limit is {max_depth} levels).", field=_path(path))
            for key, child in item.items():
                if surrogates:
                    _check_text(key, what, path)
                stack.append((child, depth + 1, (*path, key)))
        elif isinstance(item, list):
            if depth > max_depth:
                raise InvalidJson(f"{what} is nested too deeply (the limit is {max_depth} levels).", field=_path(path))
            stack.extend((child, depth + 1, (*path, index)) for index, child in enumerate(item))
        elif surrogates and isinstance(item, str):
            _check_text(item, what, path)


def _check_text(text: str, what: str, path: tuple[Any, ...]) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        where = f" at {_path(path)}" if path else ""
        raise InvalidJson(
            f"{what} holds a lone surrogate (\\u{ord(text[exc.start]):04x}){where}: text must be valid Unicode.",
            field=_path(path) or None,
        ) from None
