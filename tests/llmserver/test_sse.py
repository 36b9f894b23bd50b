"""SSE encoding and the reader that splits an upstream's byte stream into payloads."""

from __future__ import annotations

import json

import pytest

from llmserver.protocol.sse import DONE, SSELineReader, encode_comment, encode_json_event, encode_spliced_events

STREAM = (
    b": a comment\n\n"
    b'data: {"a":1}\n\n'
    b"event: message\r\n"
    b'data:{"b":"x y"}\r\n\r\n'
    b'data: {"c":"\xe4\xbd\xa0\xe5\xa5\xbd"}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(STREAM)])
def test_payloads_survive_any_network_chunking(size):
    reader = SSELineReader()
    payloads = []
    for start in range(0, len(STREAM), size):
        payloads += reader.feed(STREAM[start : start + size])
    assert payloads == [b'{"a":1}', b'{"b":"x y"}', '{"c":"你好"}'.encode(), b"[DONE]"]
    assert reader.pending() == b""


def test_encoding():
    assert encode_json_event({"x": "你"}) == 'data: {"x":"你"}\n\n'.encode()
    assert encode_comment("keep-alive") == b": keep-alive\n\n"
    assert DONE == b"data: [DONE]\n\n"
    spliced = encode_spliced_events(b'{"d":"', [b"AA", b"BB"], b'"}')
    assert [json.loads(line[6:]) for line in spliced.split(b"\n\n") if line] == [{"d": "AA"}, {"d": "BB"}]
    assert encode_spliced_events(b"h", [], b"t") == b""
