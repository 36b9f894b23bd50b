"""The registry: every tool the server can run, from every source, under one name space; which of them a request
gets; and running calls — at most so many a pass, arguments validated against the tool's JSON schema (jsonschema),
each call with its timeout and a cap on its result, failures turned into short results the model can talk about."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import jsonschema

from ..protocol.chat_request import tool_names

logger = logging.getLogger("llmserver.tools")
UNKNOWN_SOURCE = "unknown"  # the source of a call to a name the registry does not offer (a model's invention)
ERROR_CHARS = 200  # longest error a call's record keeps

ToolFunction = Callable[[dict[str, Any]], Awaitable[str]]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # a JSON schema of the arguments
    source: str  # "builtin", "webhook", "mcp:<server>"
    run: ToolFunction = field(repr=False, compare=False)
    timeout: float | None = None  # seconds; None: the registry's default
    filler: dict[str, str] = field(default_factory=dict)  # said before it runs, by language (tools file)

    def openai(self) -> dict[str, Any]:
        """As OpenAI's `tools` list holds it."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


class ToolSource(Protocol):
    """Where tools come from. `tools()` is what it offers now; `state()` says how it is doing."""

    name: str

    def tools(self) -> list[Tool]: ...

    def state(self) -> dict[str, Any]: ...

    async def reload(self) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # the JSON text the model wrote


@dataclass
class ToolOutcome:
    call: ToolCall
    source: str
    content: str  # what goes back to the model
    ok: bool
    ms: float
    error: str | None = None


class ToolRegistry:
    def __init__(
        self,
        sources: Sequence[ToolSource],
        *,
        default_timeout: float = 10.0,
        result_chars: int = 4000,
        calls_per_pass: int = 8,
    ) -> None:
        self.sources = list(sources)
        self.default_timeout = default_timeout
        self.result_chars = result_chars
        self.calls_per_pass = calls_per_pass
        self.disabled: set[str] = set()
        self._hidden: set[tuple[str, str]] = set()  # name clashes between sources, logged once each

    def all_tools(self) -> dict[str, Tool]:
        """Every tool by name; when two sources offer the same name, the first source's wins (and it is logged)."""
        tools: dict[str, Tool] = {}
        for source in self.sources:
            for tool in source.tools():
                if tool.name in tools:
                    if (tool.name, tool.source) not in self._hidden:
                        self._hidden.add((tool.name, tool.source))
                        logger.warning(
                            "tool %r of %s is hidden by the one of %s", tool.name, tool.source, tools[tool.name].source
                        )
                    continue
                tools[tool.name] = tool
        return tools

    def offered(self, caller_tools: Iterable[Any]) -> dict[str, Tool]:
        """The server's enabled tools for a request, less those whose names the caller's own tools use: the caller's
        win (their calls stream to the caller, as without server tools)."""
        caller_names = tool_names(caller_tools)
        offered = {}
        for name, tool in self.all_tools().items():
            if name in self.disabled:
                continue
            if name in caller_names:
                logger.info("tool %r: the caller's own tool of that name is used, not the server's", name)
                continue
            offered[name] = tool
        return offered

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
                "source": tool.source,
                "enabled": tool.name not in self.disabled,
                "timeout": tool.timeout or self.default_timeout,
            }
            for tool in self.all_tools().values()
        ]

    def states(self) -> list[dict[str, Any]]:
        return [source.state() for source in self.sources]

    async def reload(self) -> None:
        await asyncio.gather(*(source.reload() for source in self.sources))

    async def aclose(self) -> None:
        await asyncio.gather(*(source.aclose() for source in self.sources), return_exceptions=True)

    async def run_calls(self, calls: Sequence[ToolCall], tools: dict[str, Tool]) -> list[ToolOutcome]:
        """Runs the calls concurrently, the first `calls_per_pass` of them: the rest are answered, not run (a model
        that asks for hundreds at once must not send hundreds of requests). Never raises for a tool's failure
        (cancellation goes through)."""
        running, refused = calls[: self.calls_per_pass], calls[self.calls_per_pass :]
        outcomes = list(await asyncio.gather(*(self.run_call(call, tools) for call in running)))
        message = f"too many calls in one pass: only the first {self.calls_per_pass} ran; make fewer at a time"
        for call in refused:
            tool = tools.get(call.name)
            source = tool.source if tool else UNKNOWN_SOURCE
            outcomes.append(ToolOutcome(call, source, _error_text(message), False, 0.0, "too many calls"))
        return outcomes

    async def run_call(self, call: ToolCall, tools: dict[str, Tool]) -> ToolOutcome:
        started = time.perf_counter()
        tool = tools.get(call.name)

        def outcome(content: str, ok: bool, error: str | None = None) -> ToolOutcome:
            ms = round((time.perf_counter() - started) * 1000, 3)
            source = tool.source if tool else UNKNOWN_SOURCE
            return ToolOutcome(call, source, content, ok, ms, error)

        def failure(message: str, error: str | None = None) -> ToolOutcome:
            # The model gets the message up to the result cap (as JSON still whole); the record and the live log get
            # its start: it may quote the model's arguments, which have no bound of their own.
            content = _error_text(_shortened(message, self.result_chars))
            return outcome(content, False, _shortened(error or message, ERROR_CHARS))

        if tool is None:
            return failure(f"there is no tool named {call.name!r}", "unknown tool")
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError as exc:
            return failure(f"the arguments are not valid JSON ({exc.msg})", "invalid arguments")
        try:
            error = jsonschema.exceptions.best_match(_validator(tool.parameters).iter_errors(arguments))
        except jsonschema.SchemaError:
            return failure("the tool's own schema is invalid", "invalid schema")
        if error is not None:
            where = "/".join(str(part) for part in error.absolute_path) or "the arguments"
            return failure(f"invalid arguments at {where}: {error.message}", "invalid arguments")
        timeout = tool.timeout or self.default_timeout
        try:
            async with asyncio.timeout(timeout):
                content = await tool.run(arguments)
        except TimeoutError:
            return failure(f"the tool did not answer within {timeout:g} s", "timeout")
        except ToolFailure as exc:
            return failure(str(exc))
        except Exception as exc:  # a tool's bug must not break the stream: the model hears of it instead
            # The type and where it was raised only: an exception's text or repr can carry a request's secret
            # headers (aiohttp's errors hold their request) or the model's arguments whole.
            logger.warning("tool %r failed: %s at %s", call.name, type(exc).__name__, _raised_at(exc))
            return failure("the tool failed", type(exc).__name__)
        return outcome(self._capped(content), True)

    def _capped(self, content: str) -> str:
        if len(content) <= self.result_chars:
            return content
        return content[: self.result_chars] + f"… [cut at {self.result_chars} characters]"


def _validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A checked validator for `schema`, made once per schema object (checking and making one is the slow part;
    a tool keeps its schema object from its source's discovery or file to the next)."""
    found = _VALIDATORS.get(id(schema))
    if found is not None and found[0] is schema:
        return found[1]
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema)
    _VALIDATORS[id(schema)] = (schema, validator)  # the schema is kept alive with it, so its id stays its own
    if len(_VALIDATORS) > 1024:
        _VALIDATORS.pop(next(iter(_VALIDATORS)))
    return validator


_VALIDATORS: dict[int, tuple[dict[str, Any], jsonschema.protocols.Validator]] = {}


class ToolFailure(Exception):
    """A tool's refusal or failure, in words the model can pass on."""


def _error_text(message: str) -> str:
    return json.dumps({"error": message})


def _shortened(message: str, chars: int) -> str:
    return message if len(message) <= chars else message[:chars] + "…"


def _raised_at(exc: BaseException) -> str:
    """file:line of the innermost frame that raised `exc`."""
    trace = exc.__traceback__
    if trace is None:
        return "?"
    while trace.tb_next is not None:
        trace = trace.tb_next
    return f"{os.path.basename(trace.tb_frame.f_code.co_filename)}:{trace.tb_lineno}"
