"""The history's repair on its own: what a barge-in leaves behind made into what OpenAI accepts (the strict fake
upstream's rules, fakes.upstream.openai_refusal, are the judge), and nothing changed in a history that is fine."""

from __future__ import annotations

import pytest

from fakes.upstream import openai_refusal
from llmserver.turn.history import CUT_OFF, INTERRUPTED_RESULT, mark_interrupted, repair
from llmserver.turn.model import Repairs

SYSTEM = {"role": "system", "content": "You are a voice assistant."}
ASK = {"role": "user", "content": "Book me a table for two."}
CALL = {"id": "call_1", "type": "function", "function": {"name": "book_table", "arguments": '{"people": 2}'}}
CALLING = {"role": "assistant", "content": None, "tool_calls": [CALL]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": '{"booked": true}'}
AGAIN = {"role": "user", "content": "Actually, make it three."}


def refused(messages: list[dict]) -> str | None:
    return openai_refusal({"model": "m", "messages": messages})


def repaired(messages: list[dict]) -> tuple[list[dict], dict[str, int]]:
    repairs = Repairs()
    return repair(messages, repairs), repairs.changed()


def test_a_history_upstreams_accept_goes_as_it_came():
    history = [SYSTEM, ASK, CALLING, RESULT, {"role": "assistant", "content": "Booked."}, AGAIN]
    out, changes = repaired(history)
    assert out is history and changes == {}


def test_tool_calls_the_caller_barged_into_get_a_result_saying_so():
    history = [SYSTEM, ASK, CALLING, AGAIN]
    assert "must be followed by tool messages" in refused(history)
    out, changes = repaired(history)
    assert refused(out) is None and changes == {"results_added": 1}
    assert out[3] == {"role": "tool", "tool_call_id": "call_1", "content": INTERRUPTED_RESULT} and out[4] == AGAIN


def test_of_two_calls_only_the_unanswered_one_is_closed():
    second = {"id": "call_2", "type": "function", "function": {"name": "send_sms", "arguments": "{}"}}
    history = [ASK, {"role": "assistant", "content": None, "tool_calls": [CALL, second]}, RESULT, AGAIN]
    out, changes = repaired(history)
    assert refused(out) is None and changes == {"results_added": 1}
    assert [m.get("tool_call_id") for m in out if m["role"] == "tool"] == ["call_1", "call_2"]


def test_a_result_that_answers_no_call_is_dropped():
    history = [ASK, RESULT, AGAIN]
    assert "must be a response to a preceeding message" in refused(history)
    out, changes = repaired(history)
    assert refused(out) is None and changes == {"results_dropped": 1, "turns_joined": 1}


def test_an_assistant_turn_interrupted_before_its_first_word_is_dropped_and_the_users_joined():
    history = [SYSTEM, ASK, {"role": "assistant", "content": ""}, AGAIN]
    assert "expected a string, got null" in refused(history)
    out, changes = repaired(history)
    assert refused(out) is None and changes == {"empty_turns_dropped": 1, "turns_joined": 1}
    assert out == [SYSTEM, {"role": "user", "content": ASK["content"] + "\n" + AGAIN["content"]}]


def test_an_assistant_turn_with_audio_and_no_text_is_kept():
    history = [ASK, {"role": "assistant", "audio": {"id": "audio_1"}}, AGAIN]
    out, changes = repaired(history)
    assert out is history and changes == {}


def test_multi_part_and_named_turns_are_never_joined():
    parts = {"role": "user", "content": [{"type": "text", "text": "Look at this"}]}
    history = [ASK, parts, {"role": "user", "name": "lin", "content": "hi"}]
    out, changes = repaired(history)
    assert out is history and changes == {}


def test_an_interrupted_turn_is_what_was_spoken_marked_as_cut_off_never_the_rest():
    spoken = {"role": "assistant", "content": "I can answer questions about"}
    history = [ASK, spoken, AGAIN]
    fields = [{}, {"metadata": {"interrupted": True, "original": "I can answer questions about this server."}}, {}]
    repairs = Repairs()
    out = mark_interrupted(history, fields, repairs)
    assert out[1]["content"] == "I can answer questions about" + CUT_OFF
    assert "this server" not in str(out) and history[1] is spoken  # the caller's copy untouched
    assert repairs.changed() == {"interrupted_marked": 1}
    assert mark_interrupted(history, [{}, {"metadata": {"interrupted": False}}, {}], Repairs()) is history


@pytest.mark.parametrize(
    "history",
    [
        [{"role": "tool", "tool_call_id": "x", "content": "?"}],
        [{"role": "assistant", "content": None}],
        [ASK, CALLING],
    ],
)
def test_every_repaired_history_is_one_openai_accepts_or_goes_unchanged(history):
    out, _ = repaired(history)
    assert refused(out) is None or out is history


def test_a_result_that_came_after_the_callers_next_words_is_moved_up_not_replaced():
    # Found in review: the real result was dropped and an "interrupted" one made up: the model would book again.
    history = [ASK, CALLING, AGAIN, RESULT]
    out, changes = repaired(history)
    assert refused(out) is None and out == [ASK, CALLING, RESULT, AGAIN] and changes == {"results_moved": 1}


def test_an_empty_list_of_tool_calls_is_removed():
    history = [ASK, {"role": "assistant", "content": "Let me see.", "tool_calls": []}, AGAIN]
    assert "empty array" in refused(history)
    out, changes = repaired(history)
    assert refused(out) is None and out[1] == {"role": "assistant", "content": "Let me see."}
    assert changes == {"empty_calls_removed": 1}
