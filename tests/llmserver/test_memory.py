"""The memory of conversations' tool exchanges: keys, splicing, and its bounds."""

from __future__ import annotations

import time

import pytest

from llmserver.protocol.platforms import AGORA
from llmserver.tools.memory import ConversationMemory, Exchange, conversation_key


def exchange(call_id: str, after: str = "What is the weather?", turn_id=None) -> Exchange:
    call = {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    return Exchange(
        after,
        turn_id,
        (
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": "18 degrees"},
        ),
    )


def agora(fields: dict) -> tuple[str, list[str]] | None:
    """The Agora engine's conversation, as the platform profile reads it from its fields."""
    parts = AGORA.conversation(fields)
    return ("agora", parts) if parts else None


def history(*texts: str) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


def test_the_conversation_key_prefers_the_engines_context_then_user_then_header():
    context = {"context": {"appId": "a", "userId": "u", "channel": "c"}}
    assert conversation_key(agora(context), "someone", "h1") == 'anon:agora:["a","u","c"]'
    assert conversation_key(agora({"context": {"presence": {}}}), "someone", "h1") == 'anon:user:["someone"]'
    assert conversation_key(None, None, "h1") == 'anon:header:["h1"]'
    assert conversation_key(None, None, None) is None


def test_keys_made_of_different_parts_never_collide():
    # "a:b" + "c" and "a" + "b:c" were both "agora:a:b:c".
    one = conversation_key(agora({"context": {"appId": "a:b", "userId": "c"}}), None, None)
    other = conversation_key(agora({"context": {"appId": "a", "userId": "b:c"}}), None, None)
    assert one != other
    assert conversation_key(None, "agora:x", None) != conversation_key(agora({"context": {"appId": "x"}}), None, None)


def test_a_key_is_scoped_by_the_credential_the_caller_presented():
    keyed = conversation_key(None, "u1", None, "sk-caller-a")
    assert keyed != conversation_key(None, "u1", None, "sk-caller-b") != conversation_key(None, "u1", None)
    assert keyed == conversation_key(None, "u1", None, "sk-caller-a")
    assert "sk-caller-a" not in keyed  # a digest of it, never the key itself


def test_a_long_identity_is_hashed():
    key = conversation_key(None, "x" * 1_000_000, None)
    assert len(key) < 100 and key == conversation_key(None, "x" * 1_000_000, None)
    assert conversation_key(None, "x" * 1_000_000, None) != conversation_key(None, "x" * 999_999 + "y", None)
    assert len(conversation_key(None, "line\nbreak", None)) < 100 and "\n" not in conversation_key(None, "a\nb", None)


def test_malformed_histories_splice_without_failing():
    memory = ConversationMemory()
    memory.remember("k", exchange("call_1"))
    odd = [
        {"role": "assistant", "tool_calls": "not a list"},
        {"role": "assistant", "tool_calls": [{"no": "id"}, 3]},
        {"role": "tool", "tool_call_id": ["a", "list"], "content": "x"},
        {"role": "user", "content": "What is the weather?"},
        {"role": "assistant", "content": "18."},
        {"role": "user", "content": "And now?"},
    ]
    assert len(memory.splice("k", odd, [])) == len(odd) + 2


def test_a_long_turn_is_remembered_by_its_digest():
    from llmserver.tools.memory import turn_text

    long_turn = "Where is breakfast? " * 5000
    memory = ConversationMemory()
    memory.remember("k", exchange("call_1", after=turn_text(long_turn)))
    assert len(memory.get("k")[0]["after_user"]) < 100
    spliced = memory.splice("k", history(long_turn, "It is at seven.", "Thanks"), [])
    assert [m["role"] for m in spliced] == ["user", "assistant", "tool", "assistant", "user"]


def test_an_exchange_goes_back_after_the_user_turn_that_led_to_it_by_turn_id_or_words():
    memory = ConversationMemory()
    memory.remember("k", exchange("call_1", turn_id=1))
    messages = history("What is the weather?", "It is 18 degrees.", "And tomorrow?")
    spliced = memory.splice("k", messages, [1, 1, 2])
    assert [m["role"] for m in spliced] == ["user", "assistant", "tool", "assistant", "user"]
    by_words = ConversationMemory()
    by_words.remember("k", exchange("call_1"))
    assert [m["role"] for m in by_words.splice("k", messages, [])] == ["user", "assistant", "tool", "assistant", "user"]
    # The new question is never the turn an old exchange followed, even with the same words.
    assert by_words.splice("k", history("What is the weather?"), []) == history("What is the weather?")


def test_nothing_is_duplicated_and_a_turn_no_longer_in_the_history_is_skipped():
    memory = ConversationMemory()
    memory.remember("k", exchange("call_1"))
    once = memory.splice("k", history("What is the weather?", "18.", "Thanks"), [])
    assert memory.splice("k", once, []) == once
    assert memory.splice("k", history("Something else", "ok", "Thanks"), []) == history(
        "Something else", "ok", "Thanks"
    )


def test_bounds_conversations_messages_and_age(monkeypatch):
    memory = ConversationMemory(conversations=2, messages=4, max_age=60)
    for n in range(3):
        memory.remember(f"k{n}", exchange(f"call_{n}"))
    assert [c["key"] for c in memory.conversations()] == ["k2", "k1"]  # the least recently used went first
    for n in range(5):
        memory.remember("k2", exchange(f"more_{n}"))
    assert memory.conversations()[0]["messages"] == 4  # two exchanges of two messages: the oldest went
    assert [e["messages"][1]["tool_call_id"] for e in memory.get("k2")] == ["more_3", "more_4"]
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    assert memory.conversations() == []
    assert memory.forget("k2") is False


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"tools": [{"name": "x y", "description": "d", "url": "http://h"}]}', "does not match"),
        ('{"tools": [{"name": "x", "description": "d", "url": "ftp://h"}]}', "does not match"),
        ('{"tools": [{"name": "x", "description": "d", "url": "http://h/${NOT_SET_ANYWHERE}"}]}', "NOT_SET_ANYWHERE"),
        ('{"tools": [{"name": "x", "description": "d", "url": "http://h", "parameters": {"type": 7}}]}', "JSON schema"),
        ('{"mcp_servers": [{"name": "m"}]}', "is not valid"),
        ('{"unknown": 1}', "Additional properties"),
        ("{not json", "not valid JSON"),
    ],
)
def test_a_bad_tools_file_is_refused_naming_the_problem(tmp_path, content, message):
    from llmserver.tools.tools_file import ToolsFileError, load_tools_file

    path = tmp_path / "tools.json"
    path.write_text(content)
    with pytest.raises(ToolsFileError) as refused:
        load_tools_file(str(path))
    assert message in str(refused.value)


def test_another_processs_exchanges_are_merged_each_once_in_time_order():
    """What the shared store hands back (a catch-up re-read, an announcement heard too) may hold exchanges this
    process has already: each is kept once, else it would be spliced into the next request twice."""
    memory = ConversationMemory()
    first, second = exchange("call_1"), exchange("call_2", "And tomorrow?")
    memory.remember("k", first)
    memory.merge("k", [first, second])
    memory.merge("k", [second])
    assert [e["messages"][1]["tool_call_id"] for e in memory.get("k")] == ["call_1", "call_2"]
    memory.merge("new", [second, first])  # in time order whatever order they come in
    assert [e["messages"][1]["tool_call_id"] for e in memory.get("new")] == ["call_1", "call_2"]
