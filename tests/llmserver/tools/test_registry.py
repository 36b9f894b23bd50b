"""The registry on its own: one name space over the sources, which tools a request gets, and running calls —
arguments checked against the schema, timeouts, failures as results the model can read, the cap per pass."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from llmserver.tools.registry import Tool, ToolCall, ToolFailure, ToolRegistry

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


class Source:
    def __init__(self, name: str, *tools: Tool) -> None:
        self.name = name
        self._tools = list(tools)

    def tools(self) -> list[Tool]:
        return list(self._tools)

    def state(self) -> dict[str, Any]:
        return {"source": self.name, "reachable": True, "tools": len(self._tools)}

    async def reload(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def weather(arguments: dict[str, Any]) -> str:
    return json.dumps({"city": arguments["city"], "sky": "clear"})


async def slow(arguments: dict[str, Any]) -> str:
    await asyncio.sleep(30)
    return "never"


async def refuses(arguments: dict[str, Any]) -> str:
    raise ToolFailure("the booking system is closed")


def registry(**options: Any) -> ToolRegistry:
    tools = [
        Tool("weather", "The weather.", SCHEMA, "test", weather),
        Tool("slow", "Slow.", {"type": "object"}, "test", slow, timeout=0.1),
        Tool("refuses", "Refuses.", {"type": "object"}, "test", refuses),
        Tool("bad_schema", "Its schema is wrong.", {"type": "no such type"}, "test", weather),
    ]
    return ToolRegistry([Source("test", *tools), Source("other", Tool("weather", "Hidden.", {}, "other", weather))],
                        **options)  # fmt: skip


def run(registry: ToolRegistry, name: str, arguments: str) -> Any:
    return asyncio.run(registry.run_call(ToolCall("c1", name, arguments), registry.all_tools()))


def test_the_first_source_wins_a_name_and_the_callers_tools_win_over_the_servers():
    tools = registry()
    assert tools.all_tools()["weather"].source == "test"
    offered = tools.offered([{"type": "function", "function": {"name": "slow"}}])
    assert "slow" not in offered and "weather" in offered
    tools.disabled.add("weather")
    assert "weather" not in tools.offered([])


def test_a_call_runs_with_valid_arguments():
    outcome = run(registry(), "weather", '{"city": "Paris"}')
    assert outcome.ok and json.loads(outcome.content) == {"city": "Paris", "sky": "clear"}


@pytest.mark.parametrize(
    "name,arguments,error",
    [
        ("weather", "{not json", "invalid arguments"),
        ("weather", '{"town": "Paris"}', "invalid arguments"),
        ("nothing", "{}", "unknown tool"),
        ("slow", "{}", "timeout"),
        ("refuses", "{}", "the booking system is closed"),
        ("bad_schema", "{}", "invalid schema"),
    ],
)
def test_failures_are_results_the_model_can_read(name, arguments, error):
    outcome = run(registry(), name, arguments)
    assert not outcome.ok and outcome.error == error
    assert "error" in json.loads(outcome.content)


def test_results_are_capped():
    async def long(arguments: dict[str, Any]) -> str:
        return "x" * 10_000

    tools = ToolRegistry([Source("test", Tool("long", "Long.", {"type": "object"}, "test", long))], result_chars=100)
    outcome = run(tools, "long", "{}")
    assert outcome.ok and len(outcome.content) < 150 and outcome.content.endswith("[cut at 100 characters]")


def test_calls_past_the_cap_of_a_pass_are_answered_not_run():
    tools = registry(calls_per_pass=2)
    calls = [ToolCall(f"c{n}", "weather", '{"city": "Oslo"}') for n in range(5)]
    outcomes = asyncio.run(tools.run_calls(calls, tools.all_tools()))
    assert [outcome.ok for outcome in outcomes] == [True, True, False, False, False]
    assert [outcome.call.id for outcome in outcomes] == [f"c{n}" for n in range(5)]
