"""The tool loop's parts: a pass's calls as they stream, the caller's share of each delta, the passes' texts kept
apart, usage summed."""

from __future__ import annotations

import pytest

from llmserver.upstream.protocol import UpstreamError
from llmserver.upstream.tool_loop import PassCalls, add_usage, exchange_messages, pass_separator


def fragments(index: int, call_id: str, name: str, arguments: str) -> list[dict]:
    head = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
    third = max(1, len(arguments) // 3)
    tail = [
        {"index": index, "function": {"arguments": arguments[i : i + third]}} for i in range(0, len(arguments), third)
    ]
    return [head, *tail]


def test_server_calls_are_kept_and_the_callers_renumbered_from_zero():
    calls = PassCalls({"current_time"}, {"transfer_call"})
    shown = []
    for part in fragments(0, "c0", "current_time", '{"timezone": "UTC"}') + fragments(1, "c1", "transfer_call", "{}"):
        shown.append(calls.delta_for_caller({"tool_calls": [part]}))
    caller_parts = [part for delta in shown for part in delta.get("tool_calls", [])]
    assert {part["index"] for part in caller_parts} == {0}  # the caller's call is its first
    assert [call.name for call in calls.server_calls()] == ["current_time"]
    assert calls.server_calls()[0].arguments == '{"timezone": "UTC"}'
    assert calls.finish_reason_for_caller("tool_calls") == "tool_calls"


def test_a_call_to_a_name_nobody_offers_is_the_servers_to_answer():
    calls = PassCalls({"current_time"}, set())
    assert calls.delta_for_caller({"tool_calls": fragments(0, "c0", "invented", "{}")}) == {}
    assert [call.name for call in calls.server_calls()] == ["invented"]
    assert calls.finish_reason_for_caller("tool_calls") == "stop"  # never tool_calls with none for the caller


def test_text_passes_through_and_is_kept():
    calls = PassCalls(set(), set())
    delta = {"role": "assistant", "content": "Hello"}
    assert calls.delta_for_caller(delta) is delta and calls.joined_text == "Hello"


@pytest.mark.parametrize("index", [[0], {"i": 0}, "0", True])
def test_a_call_index_that_is_not_a_number_is_an_upstream_error(index):
    with pytest.raises(UpstreamError) as raised:
        PassCalls(set(), set()).delta_for_caller({"tool_calls": [{"index": index, "id": "c"}]})
    assert raised.value.status == 502 and raised.value.code == "upstream_bad_chunk"


@pytest.mark.parametrize(
    "before,after,separator",
    [
        ("Let me check.", "It is nine.", " "),
        ("Let me check", "It is nine.", ". "),
        ("Let me check. ", "It is nine.", ""),
        ("Let me check.", " It is nine.", ""),
        ("One moment...", "Done.", " "),
        ("让我查一下。", "东京现在九点。", ""),
        ("让我查一下", "东京现在九点。", "。"),
        ("Checking.", "东京现在九点。", ""),
        ("", "It is nine.", ""),
    ],
)
def test_consecutive_passes_read_as_two_sentences(before, after, separator):
    assert pass_separator(before, after) == separator


def test_usage_is_summed_over_passes_nested_counts_too():
    one = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "prompt_tokens_details": {"cached_tokens": 1}}
    two = {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5, "prompt_tokens_details": {"cached_tokens": 2}}
    assert add_usage(add_usage(None, one), two) == {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 3},
    }
    assert add_usage(one, "not usage") is one


def test_an_exchange_is_the_assistants_calls_then_one_result_each():
    from llmserver.tools.registry import ToolCall, ToolOutcome

    calls = PassCalls({"current_time"}, set())
    calls.delta_for_caller({"tool_calls": fragments(0, "c0", "current_time", "{}")})
    outcome = ToolOutcome(ToolCall("c0", "current_time", "{}"), "builtin", '{"spoken": "nine"}', True, 1.0)
    assistant, result = exchange_messages("Checking.", calls.server_calls(), [outcome])
    assert assistant["content"] == "Checking." and assistant["tool_calls"][0]["id"] == "c0"
    assert result == {"role": "tool", "tool_call_id": "c0", "content": '{"spoken": "nine"}'}
