"""Property-based tests (Hypothesis): whatever arrives, the request parser, the knowledge base's validation and the
live log's record path either accept it, giving something that can always be sent on, or refuse it cleanly."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.admin.live_log import record_message
from llmserver.knowledge.store import KnowledgeBase, KnowledgeError
from llmserver.protocol.chat_request import parse_chat_request
from llmserver.protocol.errors import ApiError, ServiceError
from llmserver.protocol.json_body import parse_json
from llmserver.request_log import RequestLog

BUDGET = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Any code point, with lone surrogates (what a JSON \u escape can produce) made as likely as the rest.
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
any_text = st.lists(st.characters(codec=None) | surrogates, max_size=40).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=30,
)


def encode(value: object) -> bytes:
    """JSON as a client would send it: \\u escapes for everything, so surrogates and NaN survive the trip."""
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()


def sendable(value: object) -> None:
    """What the server does with an accepted body: serialise it strictly and encode it as UTF-8."""
    json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")


@BUDGET
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_refused_cleanly(raw):
    try:
        chat = parse_chat_request(raw, "m")
    except (ApiError, ServiceError) as refusal:
        status = refusal.status
        assert status == 400
        return
    sendable(chat.body)


@BUDGET
@given(
    st.lists(
        st.fixed_dictionaries({"role": any_text}, optional={"content": json_values, "metadata": json_values}),
        max_size=4,
    ),
    st.dictionaries(st.sampled_from(["temperature", "stream", "context", "turn_id", "x"]), json_values, max_size=3),
)
def test_any_chat_request_parses_to_something_sendable_or_a_400_naming_a_field(messages, extra):
    raw = encode({"messages": messages, **extra})
    try:
        chat = parse_chat_request(raw, "m")
    except (ApiError, ServiceError) as refusal:
        assert refusal.status == 400 and str(refusal)
        return
    sendable(chat.body)
    sendable(chat.engine_fields)


@BUDGET
@given(json_values)
def test_the_one_parser_accepts_exactly_what_can_be_sent_on(value):
    raw = encode(value)
    try:
        parsed = parse_json(raw)
    except ServiceError as refusal:
        assert refusal.status == 400 and refusal.code == "invalid_json"
        return
    sendable(parsed)
    floats = [parsed] if isinstance(parsed, float) else []
    assert all(math.isfinite(number) for number in floats)


@pytest.fixture(scope="module")
def knowledge_base(tmp_path_factory) -> KnowledgeBase:
    return KnowledgeBase.load(str(tmp_path_factory.mktemp("kb") / "knowledge.json"))


@BUDGET
@given(st.dictionaries(st.sampled_from(["id", "title", "content", "tags", "enabled", "other"]), json_values))
def test_any_document_is_added_or_refused_and_the_file_stays_loadable(knowledge_base, document):
    raw = encode(document)
    try:
        knowledge_base.add(parse_json(raw))
    except (KnowledgeError, ServiceError) as refusal:
        assert 400 <= refusal.status < 500
    again = KnowledgeBase.load(knowledge_base.path)
    # What the file holds (a document's changed_at_version is the running process's, not stored).
    assert again.export() == knowledge_base.export()


@BUDGET
@given(any_text, json_values, json_values)
def test_any_record_can_be_sent_to_the_live_log(text, context, turn_id):
    log = RequestLog(text_mode="full")
    record = log.begin("req_x", "chat")
    record.last_user_message = log.text(text)
    record.engine_fields = log.bounded({"context": context})
    record.turn_id = turn_id if isinstance(turn_id, (int, str)) else None
    record.fail(400, text)
    log.finish(record)
    message = record_message(log.recent()[-1])
    assert json.loads(message)["type"] == "record"
