"""Repairing the histories voice platforms send, before every upstream call: what a barge-in leaves behind is what
OpenAI refuses with a 400, and the caller then hears the failure message instead of an answer.

- An assistant turn whose tool calls lack a result (the caller barged in while a tool ran): a result that came later
  (after the caller's next words) is moved up to its call; a missing one is added, saying the call was
  interrupted. The model then knows it asked and got no answer; dropping the calls instead would hide that a call
  which reached a webhook may have done something.
- A tool result that answers no call just before it: dropped. An empty `tool_calls: []`: removed.
- An assistant turn with nothing in it (no text, no tool calls, no audio; the engine sends one when the caller
  interrupted before the first word): dropped.
- Two user turns in a row, or two assistant texts in a row (what the drops above, or a platform, can leave), are
  joined: several upstreams (and chat templates) refuse two turns of one role in a row.
- An assistant turn the Agora engine marks interrupted (`metadata.interrupted`, the spoken part as `content`, the
  whole text as `metadata.original`) is passed as what was spoken followed by "…", so the model knows it was cut
  off; the unspoken rest never goes upstream.

What the repair cannot make valid goes on as it is (the upstream's 400 then comes back, as before).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .model import ChatTurn, Repairs

INTERRUPTED_RESULT = "Interrupted: the caller spoke before this call returned. Call it again if it is still needed."
CUT_OFF = "…"


def _calls(message: dict[str, Any]) -> list[str]:
    calls = message.get("tool_calls")
    return [call["id"] for call in calls] if isinstance(calls, list) and calls else []


def _is_empty(message: dict[str, Any]) -> bool:
    content = message.get("content")
    has_content = (isinstance(content, str) and content.strip()) or (isinstance(content, list) and content)
    return not (has_content or message.get("tool_calls") or message.get("audio") or message.get("function_call"))


def _plain_text(message: dict[str, Any], role: str) -> bool:
    """A turn of `role` that is only text, and so can be joined with its neighbour."""
    return (
        message.get("role") == role and isinstance(message.get("content"), str) and set(message) <= {"role", "content"}
    )


def mark_interrupted(
    messages: list[dict[str, Any]], message_fields: Sequence[dict[str, Any]], repairs: Repairs
) -> list[dict[str, Any]]:
    """`messages` with each assistant turn the engine marks interrupted ending in "…" (the same list when none is)."""
    marked = messages
    for index, fields in enumerate(message_fields[: len(messages)]):
        metadata = fields.get("metadata")
        message = messages[index]
        if not (isinstance(metadata, dict) and metadata.get("interrupted") is True):
            continue
        content = message.get("content")
        if message.get("role") != "assistant" or not isinstance(content, str) or not content.strip():
            continue  # nothing was spoken: an empty turn, which the repair drops
        if marked is messages:
            marked = list(messages)
        marked[index] = {**message, "content": content.rstrip() + CUT_OFF}
        repairs.interrupted_marked += 1
    return marked


def repair(messages: list[dict[str, Any]], repairs: Repairs) -> list[dict[str, Any]]:
    """The history in a shape upstreams accept (see the module's notes); the same list when it already is."""
    out: list[dict[str, Any]] = []
    waiting: list[str] = []  # the last assistant turn's calls still without a result
    results = {}  # each call's first result, wherever it is: one that came late is moved up to its call
    for index, message in enumerate(messages):
        if message.get("role") == "tool" and isinstance(message.get("tool_call_id"), str):
            results.setdefault(message["tool_call_id"], index)
    used: set[int] = set()  # results already placed after their call
    changed = False

    def close_calls(position: int) -> None:
        nonlocal changed
        for call_id in waiting:
            late = results.get(call_id)
            if late is not None and late > position and late not in used:
                out.append(messages[late])  # its real result, from where a platform put it
                used.add(late)
                repairs.results_moved += 1
            else:
                out.append({"role": "tool", "tool_call_id": call_id, "content": INTERRUPTED_RESULT})
                repairs.results_added += 1
            changed = True
        waiting.clear()

    for index, message in enumerate(messages):
        role = message.get("role")
        if role == "tool":
            if index in used:
                continue  # moved up to its call
            if message.get("tool_call_id") in waiting:
                waiting.remove(message["tool_call_id"])
                used.add(index)
                out.append(message)
            else:
                repairs.results_dropped += 1
                changed = True
            continue
        close_calls(index)
        if role == "assistant" and message.get("tool_calls") == []:
            message = {key: value for key, value in message.items() if key != "tool_calls"}  # OpenAI refuses []
            repairs.empty_calls_removed += 1
            changed = True
        if role == "assistant" and _is_empty(message):
            repairs.empty_turns_dropped += 1
            changed = True
            continue
        previous = out[-1] if out else None
        joinable = role in ("user", "assistant") and _plain_text(message, role)
        if joinable and previous is not None and _plain_text(previous, role):
            separator = "\n" if role == "user" else " "
            out[-1] = {"role": role, "content": previous["content"].rstrip() + separator + message["content"]}
            repairs.turns_joined += 1
            changed = True
            continue
        out.append(message)
        waiting = _calls(message) if role == "assistant" else []
    close_calls(len(messages))
    return out if changed and out else messages  # nothing left would be no better than what came


class InterruptedTurnsStage:
    """First of a turn's stages: interrupted assistant turns marked as cut off, while the messages still line up with
    the platform's per-message fields."""

    async def __call__(self, turn: ChatTurn) -> None:
        marked = mark_interrupted(turn.body["messages"], turn.chat.message_fields(), turn.repairs)
        if marked is not turn.body["messages"]:
            turn.body = {**turn.body, "messages": marked}


class HistoryRepairStage:
    """Last of a turn's stages, after the memory's splice and the retrieved passages: the history upstreams accept."""

    async def __call__(self, turn: ChatTurn) -> None:
        repaired = repair(turn.body["messages"], turn.repairs)
        if repaired is not turn.body["messages"]:
            turn.body = {**turn.body, "messages": repaired}
        changed = turn.repairs.changed()
        if changed:
            turn.trace.history_repaired(changed)
