"""The tool loop: the server's own tools, run between passes of one answer.

The upstream's streamed turn is relayed as it comes — text before a tool call reaches the caller at once ("let me
check that" is spoken while the tool runs). When a turn ends in calls to server tools only, they run concurrently,
the assistant's tool calls and their results are appended, and the upstream is called again, up to `max_passes`
passes (the last without the server's tools, so it answers). The caller sees one continuous stream: one id, one
role, the text of every pass, never a server tool call, usage summed over the passes, one [DONE].

The request's own tools are the caller's: their calls stream to the caller unchanged (their indexes renumbered
from 0 when a server call came first). A turn that calls both: the server runs its calls at once and keeps the
exchange in the conversation's memory (it is spliced back when the caller returns with its results), and the
stream ends with the caller's calls and `finish_reason: "tool_calls"`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..protocol.chat_request import tool_names
from ..tools.registry import Tool, ToolCall, ToolOutcome, ToolRegistry
from .protocol import UpstreamError

ExchangeListener = Callable[[list[dict[str, Any]], list[ToolOutcome]], None]


@dataclass
class ToolUse:
    """What one request's loop needs: the server tools offered, the registry that runs them, the pass limit, and
    who hears of each exchange (the conversation's memory, the request record)."""

    tools: dict[str, Tool]
    registry: ToolRegistry
    max_passes: int
    on_exchange: ExchangeListener = lambda messages, outcomes: None
    language: str = "en"  # the caller's, for a tool's filler

    def filler(self, calls: Sequence[_Call]) -> str | None:
        """What to say before the server's `calls` run, when the model said nothing first: the first of them that
        has a filler, in the caller's language (else English, else any)."""
        for call in calls:
            tool = self.tools.get(call.name)
            if tool is not None and tool.filler:
                return tool.filler.get(self.language) or tool.filler.get("en") or next(iter(tool.filler.values()))
        return None

    def pass_calls(self, body: dict[str, Any]) -> PassCalls:
        return PassCalls(set(self.tools), tool_names(body.get("tools")))

    def body_for_pass(self, body: dict[str, Any], messages: list[dict[str, Any]], last: bool) -> dict[str, Any]:
        caller_tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
        server_tools = [] if last else [tool.openai() for tool in self.tools.values()]
        result = {**body, "messages": messages}
        if caller_tools or server_tools:
            result["tools"] = caller_tools + server_tools
        else:
            result.pop("tools", None)
            result.pop("tool_choice", None)
            result.pop("parallel_tool_calls", None)
        return result


@dataclass
class _Call:
    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""
    server: bool | None = None  # None until its name is known
    pending: list[dict[str, Any]] = field(default_factory=list)  # caller fragments held until then

    def as_tool_call(self) -> ToolCall:
        return ToolCall(self.id, self.name, self.arguments)

    def as_message_part(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class PassCalls:
    """One pass of the upstream, as it streams: its text and its tool calls, and the delta the caller may see."""

    def __init__(self, server_names: set[str], caller_names: set[str]) -> None:
        # A call to a name neither side offers (a model's invention) is the server's to answer with an error the
        # model can correct; only the caller's own tools ever reach the caller.
        self.server_names = server_names
        self.caller_names = caller_names
        self.calls: dict[int, _Call] = {}
        self.text: list[str] = []
        self.finish_reason: str | None = None
        self._caller_indexes: dict[int, int] = {}

    def delta_for_caller(self, delta: dict[str, Any]) -> dict[str, Any]:
        """`delta` without the server's tool-call fragments (they are kept here), caller calls renumbered."""
        content = delta.get("content")
        if isinstance(content, str):
            self.text.append(content)
        if "tool_calls" not in delta:
            return delta
        out = {key: value for key, value in delta.items() if key != "tool_calls"}
        parts: list[dict[str, Any]] = []
        for part in delta.get("tool_calls") or []:
            if not isinstance(part, dict):
                continue
            index = part.get("index")
            index = 0 if index is None else index  # upstreams that stream one call may leave it out
            if not isinstance(index, int) or isinstance(index, bool):
                raise UpstreamError(
                    502, "The upstream sent a tool call whose index is not a number.", code="upstream_bad_chunk"
                )
            call = self.calls.setdefault(index, _Call(index))
            if isinstance(part.get("id"), str):
                call.id = part["id"]
            function = part.get("function") if isinstance(part.get("function"), dict) else {}
            if isinstance(function.get("name"), str):
                call.name += function["name"]
            if isinstance(function.get("arguments"), str):
                call.arguments += function["arguments"]
            if call.server is None and call.name:
                call.server = call.name in self.server_names or call.name not in self.caller_names
            if call.server is None:
                call.pending.append(part)
            elif not call.server:
                caller_index = self._caller_indexes.setdefault(index, len(self._caller_indexes))
                for fragment in [*call.pending, part]:
                    parts.append({**fragment, "index": caller_index})
                call.pending = []
        if parts:
            out["tool_calls"] = parts
        return out

    def server_calls(self) -> list[_Call]:
        return [call for call in self.calls.values() if call.server]

    def caller_calls(self) -> list[_Call]:
        return [call for call in self.calls.values() if not call.server]

    def finish_reason_for_caller(self, upstream_reason: str | None) -> str:
        """How the answer ends for the caller: with its own calls, or as the upstream said — but never "tool_calls"
        with none for it (the pass limit: the server's calls of the last pass are not run)."""
        if self.caller_calls():
            return "tool_calls"
        return "stop" if upstream_reason in (None, "", "tool_calls") else upstream_reason

    @property
    def joined_text(self) -> str:
        return "".join(self.text)


_SENTENCE_ENDS = frozenset(".!?…:;。！？：；")
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\u3040-\u30ff\uac00-\ud7af]")


def pass_separator(before: str, after: str) -> str:
    """What goes between the text of one pass and the next's so that they read, and are spoken, as two sentences:
    "Let me check." + "It is nine." would otherwise reach the caller as "Let me check.It is nine." (TTS says
    "check dot it"). Nothing in Chinese or Japanese, which has no spaces, but a full stop where the first had none."""
    if not before or not after or before[-1].isspace() or after[0].isspace():
        return ""
    last = before[-1]
    if _CJK.match(last) or _CJK.match(after[0]):
        return "" if last in _SENTENCE_ENDS or not _CJK.match(last) else "。"
    return " " if last in _SENTENCE_ENDS or not last.isalnum() else ". "


def exchange_messages(
    text: str | None, calls: Sequence[_Call], outcomes: Sequence[ToolOutcome]
) -> list[dict[str, Any]]:
    """The assistant's tool calls and one tool message per result, as OpenAI's history holds them."""
    assistant = {"role": "assistant", "content": text or None, "tool_calls": [call.as_message_part() for call in calls]}
    results = [{"role": "tool", "tool_call_id": o.call.id, "content": o.content} for o in outcomes]
    return [assistant, *results]


def add_usage(total: dict[str, Any] | None, usage: Any) -> dict[str, Any] | None:
    """Usage summed over passes (nested counts too)."""
    if not isinstance(usage, dict):
        return total
    if total is None:
        return usage
    summed = dict(total)
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and isinstance(summed.get(key), (int, float)):
            summed[key] = summed[key] + value
        elif isinstance(value, dict):
            summed[key] = add_usage(summed.get(key) if isinstance(summed.get(key), dict) else None, value)
        else:
            summed.setdefault(key, value)
    return summed
