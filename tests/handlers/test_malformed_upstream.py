"""An upstream answering malformed HTTP (a bad status line, a bad chunk size, a 100 KB header line, stray bytes
after a body, something that is not HTTP at all): every endpoint answers a 502 in OpenAI's error shape, or an error
event once streaming has begun, never a 500 with a traceback."""

from __future__ import annotations

import json

import pytest

from fakes.raw_upstream import MALFORMED_ANSWERS, RawUpstream
from tests.client import post, stream

USER = {"role": "user", "content": "Hello"}


@pytest.fixture
def raw_upstream(request, io_loop):
    upstream = io_loop.run_sync(RawUpstream(MALFORMED_ANSWERS[request.param]).start)
    yield upstream
    io_loop.run_sync(upstream.stop)


@pytest.fixture
def settings(settings, raw_upstream):
    return settings.replace(base_url=raw_upstream.base_url)


def assert_upstream_error(status: int, body: bytes) -> None:
    assert status == 502, body
    error = json.loads(body)["error"]
    assert error["type"] == "server_error" and error["code"].startswith("upstream_")


@pytest.mark.parametrize("raw_upstream", sorted(MALFORMED_ANSWERS), indirect=True)
@pytest.mark.parametrize("path", ["/chat/completions", "/rag/chat/completions"])
@pytest.mark.gen_test
async def test_malformed_http_from_the_upstream_is_a_502(http_server, base_url, raw_upstream, path):
    for _ in range(2):  # the second on a connection the first may have left in the pool
        result = await stream(base_url, path, {"messages": [USER]})
        if result.response.code == 200:  # /rag's waiting message went first, or the answer came whole before a fault
            errors = [event for event in result.chunks if "error" in event]
            assert len(errors) <= 1 and result.events[-1] == "[DONE]"
            if errors:
                assert errors[0]["error"]["code"].startswith("upstream_")
        else:
            assert_upstream_error(result.response.code, result.response.body)
        response = await post(base_url, path, {"messages": [USER]})
        if response.code != 200:
            assert_upstream_error(response.code, response.body)


@pytest.mark.parametrize("raw_upstream", ["bad_status_line", "not_http", "huge_header_line"], indirect=True)
@pytest.mark.gen_test
async def test_the_model_list_from_a_malformed_upstream_is_a_502(http_server, base_url, raw_upstream):
    from tornado.httpclient import AsyncHTTPClient

    response = await AsyncHTTPClient().fetch(base_url + "/v1/models", raise_error=False)
    assert_upstream_error(response.code, response.body)
