"""Hostile and unusual input, each a defect found by fuzzing and fault injection: a clean 4xx in the endpoint's own
error shape, never a 500, a traceback, a lost record or a frozen live log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from tests.client import json_of, post, stream
from tests.handlers.admin_client import bearer, sign_in_with_cookie

USER = {"role": "user", "content": "Hello"}
COMPLETION_PATHS = ["/chat/completions", "/rag/chat/completions", "/audio/chat/completions"]


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def chat_body(messages_json: str, extra: str = "") -> bytes:
    return ('{"stream": true, "messages": ' + messages_json + extra + "}").encode()


async def raw_exchange(base_url: str, request: bytes) -> bytes:
    """Sends `request` as it is on a socket, reading meanwhile, and returns what came back before the server closed
    (or 5 s passed): the server may answer before it has read all of a body it refuses."""
    port = int(base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        with contextlib.suppress(ConnectionError):
            for start in range(0, len(request), 1 << 20):
                writer.write(request[start : start + (1 << 20)])
                await writer.drain()

    sending = asyncio.ensure_future(send())
    received = b""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), 5)
            if not data:
                break
            received += data
    except (TimeoutError, ConnectionError):
        pass
    finally:
        sending.cancel()
        writer.close()
    return received


def json_error(raw_response: bytes) -> dict:
    _, _, body = raw_response.partition(b"\r\n\r\n")
    return json.loads(body)["error"]


# 1. A lone surrogate must never reach a record, and a record must never stop the live log ------------------------


@pytest.mark.parametrize("path", COMPLETION_PATHS)
@pytest.mark.gen_test
async def test_a_lone_surrogate_is_a_400_naming_it_on_every_completion_endpoint(
    http_server, base_url, fake_upstream, path
):
    body = chat_body('[{"role": "user", "content": "bad \\ud800 text"}]')
    response = await post(base_url, path, None, raw=body)
    assert response.code == 400, response.body  # /rag: before the waiting message, not an error event after it
    error = json_of(response)["error"]
    assert error["code"] == "invalid_json" and "surrogate" in error["message"]
    assert error["param"] == "messages[0].content"
    assert fake_upstream.requests == []


@pytest.mark.gen_test
async def test_encoded_surrogates_and_stray_bytes_are_refused_too(http_server, base_url):
    for raw in (b'{"messages": [{"role": "user", "content": "\xed\xa0\x80"}]}', b'{"messages": "\xff"}'):
        response = await post(base_url, "/chat/completions", None, raw=raw)
        assert response.code == 400 and "UTF-8" in json_of(response)["error"]["message"]


@pytest.mark.gen_test
async def test_valid_surrogate_pairs_are_text_like_any_other(http_server, base_url, fake_upstream):
    response = await post(
        base_url, "/chat/completions", None, raw=chat_body('[{"role": "user", "content": "\\ud83d\\ude00"}]')
    )
    assert response.code == 200 and fake_upstream.last.body["messages"][0]["content"] == "😀"


@pytest.mark.gen_test
async def test_the_live_log_keeps_going_after_a_hostile_request(http_server, base_url, services):
    await post(base_url, "/chat/completions", None, raw=chat_body('[{"role": "user", "content": "\\udfff"}]'))
    await stream(base_url, "/chat/completions", {"messages": [{"role": "user", "content": "after it"}]})
    socket = await websocket_connect(
        HTTPRequest(
            base_url.replace("http", "ws") + "/admin/ws/logs",
            headers={"Authorization": f"Bearer {services.admin_token}"},
        )
    )
    seen = []
    while "after it" not in seen:
        message = json.loads(await asyncio.wait_for(socket.read_message(), 5))
        seen.append(message["record"]["last_user_message"])
    await stream(base_url, "/chat/completions", {"messages": [{"role": "user", "content": "live one"}]})
    message = json.loads(await asyncio.wait_for(socket.read_message(), 5))
    assert message["record"]["last_user_message"] == "live one"
    socket.close()


@pytest.mark.gen_test
async def test_a_record_that_cannot_be_sent_is_skipped_and_counted_not_fatal(http_server, base_url, services, caplog):
    """Defence in depth: even a record that slipped past every check (here put in by hand) cannot stop a sender."""
    log = services.request_log
    bad = log.begin("req_bad", "chat")
    log.finish(bad)
    log.recent()[-1]["last_user_message"] = "\udfff"  # as an unchecked record would hold it
    socket = await websocket_connect(
        HTTPRequest(
            base_url.replace("http", "ws") + "/admin/ws/logs",
            headers={"Authorization": f"Bearer {services.admin_token}"},
        )
    )
    with caplog.at_level(logging.WARNING, logger="llmserver.handlers"):
        missed = json.loads(await asyncio.wait_for(socket.read_message(), 5))
    assert missed == {"type": "missed", "count": 1}
    await stream(base_url, "/chat/completions", {"messages": [{"role": "user", "content": "still live"}]})
    live = json.loads(await asyncio.wait_for(socket.read_message(), 5))
    assert live["record"]["last_user_message"] == "still live"
    assert "cannot be encoded" in caplog.text
    socket.close()


# 2. Numbers that are not JSON, and nesting that would exhaust Python's recursion -----------------------------------

NOT_JSON_NUMBERS = [
    (', "temperature": NaN', "NaN"),
    (', "temperature": Infinity', "Infinity"),
    (', "temperature": -Infinity', "-Infinity"),
    (', "temperature": 1e400', "out of range"),
    (', "metadata": {"x": [1, 2, -1e999]}', "out of range"),
]


@pytest.mark.parametrize("extra,named", NOT_JSON_NUMBERS)
@pytest.mark.gen_test
async def test_nan_infinity_and_overflowing_numbers_are_400s(http_server, base_url, fake_upstream, extra, named):
    response = await post(base_url, "/chat/completions", None, raw=chat_body("[" + json.dumps(USER) + "]", extra))
    assert response.code == 400
    assert named in json_of(response)["error"]["message"] and fake_upstream.requests == []


@pytest.mark.parametrize("depth", [65, 900, 1000, 5000, 100_000])
@pytest.mark.parametrize("path", [*COMPLETION_PATHS, "/admin/api/knowledge", "/admin/api/knowledge.json"])
@pytest.mark.gen_test
async def test_deep_nesting_is_a_400_on_every_json_endpoint(http_server, base_url, services, path, depth):
    raw = ('{"messages": [' + json.dumps(USER) + '], "context": ' + deep(depth) + "}").encode()
    headers = {"Authorization": f"Bearer {services.admin_token}"} if path.startswith("/admin") else {}
    method = "PUT" if path.endswith(".json") else "POST"
    response = await AsyncHTTPClient().fetch(
        base_url + path, method=method, body=raw, headers=headers, raise_error=False
    )
    assert response.code == 400
    error = json_of(response)["error"]
    assert "nested too deeply" in error["message"] and error["code"] == "invalid_json"


@pytest.mark.gen_test
async def test_deep_engine_fields_within_the_limit_keep_their_record_bounded(http_server, base_url, services):
    nested: object = "bottom"
    for _ in range(60):
        nested = {"down": nested}
    result = await stream(base_url, "/chat/completions", {"messages": [USER], "context": nested, "turn_id": 5})
    assert result.response.code == 200
    record = services.request_log.recent()[-1]
    assert record["turn_id"] == 5 and record["outcome"] == "ok"
    depth, value = 0, record["engine_fields"]["context"]
    while isinstance(value, dict):
        depth, value = depth + 1, value["down"]
    assert depth <= 6 and value == "…"


@pytest.mark.gen_test
async def test_admin_saves_refuse_surrogates_and_change_nothing(http_server, base_url, services, settings):
    from tests.handlers.test_admin_api import stored

    before = stored(settings)
    admin = bearer(base_url, services.admin_token)
    raw = b'{"id": "bad", "content": "text \\ud800 here"}'
    response = await admin.fetch("POST", "/admin/api/knowledge", raw=raw)
    assert response.code == 400 and "surrogate" in json_of(response)["error"]["message"]
    imported = await admin.fetch(
        "PUT", "/admin/api/knowledge.json", raw=b'{"documents": [{"id": "x", "content": NaN}]}'
    )
    assert imported.code == 400
    assert stored(settings) == before


# 3. Framing, paths and pages ---------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_nul_in_a_static_path_is_a_json_404(http_server, base_url):
    for path in ("/static/x%00.js", "/static/js/%00", "/static/%0a.css"):
        response = await AsyncHTTPClient().fetch(base_url + path, raise_error=False)
        assert response.code == 404 and json_of(response)["error"]["type"] == "not_found_error"


def chunked(path: str, headers: str, body: bytes, piece: int = 16_384) -> bytes:
    request = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{headers}"
    request += "Transfer-Encoding: chunked\r\n\r\n"
    pieces = [body[i : i + piece] for i in range(0, len(body), piece)]
    return request.encode() + b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"


@pytest.mark.settings(max_body_bytes=4096)
@pytest.mark.parametrize("path", ["/chat/completions", "/rag/chat/completions", "/admin/api/knowledge"])
@pytest.mark.gen_test
async def test_an_oversized_chunked_body_gets_the_json_413_and_the_connection_stays_usable(
    http_server, base_url, services, path
):
    headers = f"Authorization: Bearer {services.admin_token}\r\n" if path.startswith("/admin") else ""
    limit = 4096 if not path.startswith("/admin") else 64 * 1024 * 1024
    oversized = chunked(path, headers, b"x" * (limit + 200_000))
    follow_up = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    response = await raw_exchange(base_url, oversized + follow_up)
    first, _, second = response.partition(b"HTTP/1.1 200")
    assert first.startswith(b"HTTP/1.1 413"), response[:300]
    assert b"X-Request-Id: req_" in first and json_error(first)["code"] == "request_too_large"
    assert b'"status": "ok"' in second  # the same connection answered the next request


@pytest.mark.gen_test
async def test_a_body_far_over_the_limit_is_answered_at_once_and_the_connection_closed(http_server, base_url):
    request = b"POST /chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nfffffffff\r\n"
    request += b"x" * (6 * 1024 * 1024)  # the server has answered before this is all sent
    response = await raw_exchange(base_url, request)
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"Connection: close" in response and json_error(response)["code"] == "request_too_large"
    declared = b"POST /chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999\r\n\r\n{}"
    response = await raw_exchange(base_url, declared)
    assert response.startswith(b"HTTP/1.1 413") and b"Connection: close" in response


@pytest.mark.parametrize(
    "method,path,status",
    [("PUT", "/admin", 405), ("DELETE", "/admin/", 405), ("PATCH", "/admin", 405)],
)
@pytest.mark.gen_test
async def test_the_admin_page_answers_errors_as_pages_in_its_style(http_server, base_url, method, path, status):
    response = await AsyncHTTPClient().fetch(
        base_url + path,
        method=method,
        body=b"" if method != "DELETE" else None,
        raise_error=False,
        allow_nonstandard_methods=True,
    )
    assert response.code == status and response.headers["Content-Type"].startswith("text/html")
    page = response.body.decode()
    assert "admin.css" in page and str(status) in page and "Traceback" not in page
    assert response.headers["X-Request-Id"].startswith("req_")


@pytest.mark.parametrize(
    "method,path,status",
    [
        ("GET", "/chat/completions", 405),
        ("DELETE", "/v1/rag/chat/completions", 405),
        ("PUT", "/healthz", 405),
        ("GET", "/admin/ws/logs", 400),
        ("POST", "/admin/ws/logs", 405),
        ("POST", "/static/js/main.js", 405),
        ("GET", "/v2/anything", 404),
    ],
)
@pytest.mark.gen_test
async def test_api_routes_always_answer_the_json_error_shape(http_server, base_url, services, method, path, status):
    headers = {"Authorization": f"Bearer {services.admin_token}"}
    response = await AsyncHTTPClient().fetch(
        base_url + path,
        method=method,
        headers=headers,
        body=b"{}" if method in ("POST", "PUT") else None,
        raise_error=False,
        allow_nonstandard_methods=True,
    )
    assert response.code == status
    assert set(json_of(response)["error"]) == {"message", "type", "param", "code"}


# 4. A refusal before the body is read says it closes the connection -----------------------------------------------


@pytest.mark.gen_test
async def test_an_admin_401_before_the_body_says_connection_close(http_server, base_url):
    response = await AsyncHTTPClient().fetch(
        base_url + "/admin/api/knowledge", method="POST", body=b'{"id": "x", "content": "y"}', raise_error=False
    )
    assert response.code == 401 and response.headers["Connection"] == "close"
    # Whenever the server closes after an answer, the answer says so: a pooled client never sends into it.
    twice = b"GET /admin/api/status HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    answers = await raw_exchange(base_url, twice)
    assert answers.startswith(b"HTTP/1.1 401") and b"Connection: close" in answers


# 5. stream: false has an overall deadline --------------------------------------------------------------------------


@pytest.mark.settings(completion_timeout=0.5, read_timeout=60, upstream_retries=2)
@pytest.mark.gen_test
async def test_a_non_streaming_request_gives_up_at_its_deadline_whatever_the_retries(
    http_server, base_url, fake_upstream
):
    fake_upstream.behaviour.hang_before_headers = True
    started = asyncio.get_running_loop().time()
    response = await post(base_url, "/chat/completions", {"messages": [USER], "stream": False})
    assert response.code == 504 and json_of(response)["error"]["code"] == "completion_timeout"
    assert asyncio.get_running_loop().time() - started < 5
    await asyncio.wait_for(fake_upstream.last.closed.wait(), 5)  # and the upstream call was cancelled


# 6. A connection that closes before any upstream byte is retried on another, on every endpoint ----------------------


@pytest.mark.parametrize("path", ["/chat/completions", "/rag/chat/completions"])
@pytest.mark.parametrize("stream_flag", [True, False])
@pytest.mark.gen_test
async def test_a_kept_alive_connection_closed_by_the_upstream_is_retried(
    http_server, base_url, fake_upstream, services, path, stream_flag
):
    fake_upstream.behaviour.drop_connections = 2  # with UPSTREAM_RETRIES=0, as in these tests
    response = await post(base_url, path, {"messages": [USER], "stream": stream_flag})
    assert response.code == 200, response.body
    assert b"error" not in response.body and len(fake_upstream.requests) == 3
    assert services.request_log.recent()[-1]["upstream_attempts"] == 3


@pytest.mark.parametrize("path", ["/chat/completions", "/rag/chat/completions"])
@pytest.mark.gen_test
async def test_a_stream_that_breaks_before_its_first_chunk_is_retried(http_server, base_url, fake_upstream, path):
    fake_upstream.behaviour.headers_then_close = 1  # with UPSTREAM_RETRIES=0, as in these tests
    result = await stream(base_url, path, {"messages": [USER]})
    assert result.response.code == 200 and result.events[-1] == "[DONE]"
    assert not [event for event in result.chunks if "error" in event] and "word4" in result.text


@pytest.mark.gen_test
async def test_an_upstream_closing_every_connection_after_its_response_costs_no_request(
    http_server, base_url, fake_upstream
):
    fake_upstream.behaviour.close_after_response = True
    for _ in range(30):
        for path in ("/chat/completions", "/rag/chat/completions"):
            result = await stream(base_url, path, {"messages": [USER]})
            assert result.response.code == 200 and result.events[-1] == "[DONE]"
            assert not [event for event in result.chunks if "error" in event]


# 7. Error messages are ours ------------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_client_visible_errors_name_no_internal_classes(http_server, base_url, fake_upstream):
    fake_upstream.behaviour.cut_after = 2
    result = await stream(base_url, "/chat/completions", {"messages": [USER]})
    error = result.events[-2]["error"]
    assert error["message"] == "The upstream stream broke off."
    for word in ("Error", "<", "aiohttp", "httpx", "Exception"):
        assert word not in error["message"]


# 11. Security ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", COMPLETION_PATHS)
@pytest.mark.gen_test
async def test_a_cross_site_form_post_never_reaches_the_upstream(http_server, base_url, fake_upstream, path):
    # What a form on another site's page sends: text/plain, the browser's Origin, JSON smuggled in the body.
    body = b'{"messages": [{"role": "user", "content": "spend your key"}], "x": "="}'
    response = await post(
        base_url, path, None, raw=body, headers={"Content-Type": "text/plain", "Origin": "https://evil.example"}
    )
    assert response.code == 403 and json_of(response)["error"]["code"] == "cross_site_refused"
    assert fake_upstream.requests == []
    same_site = await post(base_url, "/chat/completions", {"messages": [USER]}, headers={"Origin": base_url})
    assert same_site.code == 200


@pytest.mark.settings(cors_origins=("https://app.example",))
@pytest.mark.gen_test
async def test_cors_allows_configured_origins_with_a_preflight(http_server, base_url, fake_upstream):
    preflight = await AsyncHTTPClient().fetch(
        base_url + "/v1/chat/completions",
        method="OPTIONS",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        raise_error=False,
    )
    assert preflight.code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    allowed = await post(base_url, "/chat/completions", {"messages": [USER]}, headers={"Origin": "https://app.example"})
    assert allowed.code == 200 and allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "X-Request-Id" in allowed.headers["Access-Control-Expose-Headers"]
    other = await post(base_url, "/chat/completions", {"messages": [USER]}, headers={"Origin": "https://other.example"})
    assert other.code == 403


@pytest.mark.gen_test
async def test_repeated_wrong_admin_tokens_are_slowed_down(http_server, base_url, services):
    codes = []
    for n in range(14):
        forged = {"X-Forwarded-For": f"10.0.0.{n}"}  # from an untrusted peer: ignored
        response = await AsyncHTTPClient().fetch(
            base_url + "/admin/api/status", headers={"Authorization": f"Bearer wrong-{n}", **forged}, raise_error=False
        )
        codes.append(response.code)
    assert codes[:10] == [401] * 10 and set(codes[10:]) == {429}
    assert int(response.headers["Retry-After"]) >= 1
    assert json_of(response)["error"]["code"] == "too_many_attempts"
    page = await AsyncHTTPClient().fetch(base_url + "/admin?token=wrong", raise_error=False)
    assert page.code == 429 and "text/html" in page.headers["Content-Type"]

    # The right token, from the same (throttled) address, always signs in: a stranger behind the operators' proxy
    # cannot keep them out. So does the cookie it gives.
    right = {"Authorization": f"Bearer {services.admin_token}"}
    assert (await AsyncHTTPClient().fetch(base_url + "/admin/api/status", headers=right)).code == 200
    admin = await sign_in_with_cookie(base_url, services.admin_token)
    assert (await admin.fetch("GET", "/admin/api/status")).code == 200
    still = await AsyncHTTPClient().fetch(
        base_url + "/admin/api/status", headers={"Authorization": "Bearer wrong-again"}, raise_error=False
    )
    assert still.code == 429


@pytest.mark.settings(trusted_proxies=("127.0.0.1",))
@pytest.mark.gen_test
async def test_forwarded_addresses_are_believed_from_trusted_proxies_only(http_server, base_url, services, caplog):
    for n in range(14):
        response = await AsyncHTTPClient().fetch(
            base_url + "/admin/api/status",
            headers={"Authorization": "Bearer wrong", "X-Forwarded-For": f"203.0.113.{n}, 127.0.0.1"},
            raise_error=False,
        )
        assert response.code == 401  # each a different client behind the proxy
    caplog.set_level(logging.INFO, logger="tornado.access")
    await AsyncHTTPClient().fetch(base_url + "/healthz", headers={"X-Forwarded-For": "198.51.100.7"})
    assert "(198.51.100.7)" in caplog.text


@pytest.mark.gen_test
async def test_the_live_log_refuses_an_origin_of_another_scheme(http_server, base_url, services):
    from tornado.httpclient import HTTPClientError

    headers = {"Authorization": f"Bearer {services.admin_token}", "Origin": base_url.replace("http://", "https://")}
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(HTTPRequest(base_url.replace("http", "ws") + "/admin/ws/logs", headers=headers))
    assert refused.value.code == 403


@pytest.mark.parametrize("mode,expected", [("none", ""), ("full", "x" * 500), ("truncated", "x" * 199 + "…")])
@pytest.mark.gen_test
async def test_user_text_in_the_log_follows_the_setting(http_server, base_url, services, settings, mode, expected):
    services.request_log.text_mode = mode
    await stream(base_url, "/rag/chat/completions", {"messages": [{"role": "user", "content": "x" * 500}]})
    record = services.request_log.recent()[-1]
    assert record["last_user_message"] == expected and record["retrieval"]["query"] == expected


# 12. Gaps real clients hit -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/rag/models", "/rag/models", "/v1/audio/models", "/audio/models", "/models"])
@pytest.mark.gen_test
async def test_every_endpoints_base_url_has_a_model_list(http_server, base_url, path):
    response = await AsyncHTTPClient().fetch(base_url + path, raise_error=False)
    assert response.code == 200 and json_of(response)["object"] == "list" and json_of(response)["data"]


@pytest.mark.gen_test
async def test_head_on_healthz(http_server, base_url):
    response = await AsyncHTTPClient().fetch(base_url + "/healthz", method="HEAD", raise_error=False)
    assert response.code == 200 and response.body == b""


@pytest.mark.gen_test
async def test_ping_answers_as_agoras_samples_do(http_server, base_url):
    response = await AsyncHTTPClient().fetch(base_url + "/ping", raise_error=False)
    assert response.code == 200 and json_of(response) == {"message": "pong"}


@pytest.mark.parametrize(
    "headers,body",
    [
        ({"Content-Type": "multipart/form-data"}, b"token=x"),
        ({"Content-Type": "multipart/form-data; boundary=abc"}, b"--abc\r\ngarbage without an end"),
        ({"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "identity"}, b"token=x"),
    ],
)
@pytest.mark.gen_test
async def test_a_malformed_sign_in_form_is_a_400_page(http_server, base_url, headers, body):
    """Found by bench/fuzz.py: the form was parsed without catching Tornado's refusal (a 500)."""
    response = await AsyncHTTPClient().fetch(
        base_url + "/admin", method="POST", body=body, headers=headers, raise_error=False
    )
    assert response.code == 400 and "text/html" in response.headers["Content-Type"]
    assert "could not be read" in response.body.decode()


@pytest.mark.gen_test
async def test_a_huge_model_name_or_turn_id_is_kept_short_in_the_record(http_server, base_url, services):
    """Found by bench/fuzz.py: a 1 MB model name or turn id was kept whole in every record and log line."""
    body = {"model": "m" * 256, "turn_id": "t" * 400_000, "messages": [USER]}
    await post(base_url, "/audio/chat/completions", body)
    record = services.request_log.recent()[-1]
    assert len(record["model"]) <= 200 and len(record["turn_id"]) <= 200
    assert len(json.dumps(record)) < 10_000


@pytest.mark.parametrize("path", COMPLETION_PATHS)
@pytest.mark.gen_test
async def test_a_model_name_longer_than_any_model_is_a_400(http_server, base_url, fake_upstream, path):
    # Found by bench/fuzz: every chunk of an answer names the model, so a 500 KB name came back in each of an audio
    # clip's hundreds of chunks (a 100 MB answer to a 500 KB request).
    response = await post(base_url, path, {"model": "m" * 500_000, "stream": True, "messages": [USER]})
    assert response.code == 400 and json_of(response)["error"]["param"] == "model"
    assert not fake_upstream.requests
