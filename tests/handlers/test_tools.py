"""The server's own tools, end to end: a scripted fake upstream that streams tool calls in fragments, a real webhook
server, a real MCP server (the `mcp` package's), the loop's passes, its limits, barge-in, and the memory of a
conversation's tool exchanges."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web
from tornado.httpclient import AsyncHTTPClient

from fakes.mcp_server import STDIO_COMMAND, serving_http
from fakes.redis_server import free_port
from fakes.upstream import ScriptedTurn
from llmserver.tools.tools_file import ToolsFileError, load_tools_file
from tests.client import RawClient, eventually, json_of, post, stream
from tests.handlers.admin_client import bearer

pytestmark = pytest.mark.settings(server_tools=("chat", "rag"))
USER = {"role": "user", "content": "Book me a table for two tonight."}
CONTEXT = {"appId": "app1", "userId": "u42", "channel": "room7"}


class WebhookBehaviour:
    def __init__(self) -> None:
        self.received: list[dict] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.closed = asyncio.Event()
        self.delay = 0.0


class BookingHandler(tornado.web.RequestHandler):
    def initialize(self, behaviour: WebhookBehaviour) -> None:
        self.behaviour = behaviour

    def on_connection_close(self) -> None:
        self.behaviour.closed.set()

    async def post(self, what: str) -> None:
        behaviour = self.behaviour
        behaviour.received.append(
            {"path": what, "body": json.loads(self.request.body), "headers": dict(self.request.headers)}
        )
        behaviour.in_flight += 1
        behaviour.most_in_flight = max(behaviour.most_in_flight, behaviour.in_flight)
        try:
            await asyncio.sleep(behaviour.delay if what != "slow" else 30)
        finally:
            behaviour.in_flight -= 1
        if what == "fail":
            self.set_status(500)
            self.finish({"detail": "database down"})
            return
        self.finish({"booking": "confirmed", "people": json.loads(self.request.body).get("people")})


class RedirectLoopHandler(tornado.web.RequestHandler):
    """Sends every request back to itself, forever."""

    def get(self) -> None:
        self.redirect(self.request.uri)

    post = get


class EndlessHandler(tornado.web.RequestHandler):
    """A gzip body that never ends, each megabyte of text a kilobyte on the wire (as a hostile or broken service
    might send): a client that reads the body whole never finishes."""

    def initialize(self, behaviour: WebhookBehaviour) -> None:
        self.behaviour = behaviour

    def on_connection_close(self) -> None:
        self.behaviour.closed.set()

    async def post(self) -> None:
        self.set_header("Content-Encoding", "gzip")
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        compressor = zlib.compressobj(wbits=31)  # gzip
        with contextlib.suppress(tornado.iostream.StreamClosedError):
            while True:
                self.write(compressor.compress(b"a" * 1024 * 1024) + compressor.flush(zlib.Z_SYNC_FLUSH))
                await self.flush()
                await asyncio.sleep(0)  # a flush already done does not yield: the client shares this loop


@pytest.fixture
def webhooks(io_loop) -> Iterator[tuple[str, WebhookBehaviour]]:
    behaviour = WebhookBehaviour()
    app = tornado.web.Application(
        [
            (r"/hooks/loop", RedirectLoopHandler),
            (r"/hooks/endless", EndlessHandler, {"behaviour": behaviour}),
            (r"/hooks/(\w+)", BookingHandler, {"behaviour": behaviour}),
        ]
    )
    server = tornado.httpserver.HTTPServer(app)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}/hooks", behaviour
    server.stop()
    io_loop.run_sync(server.close_all_connections)


BOOKING_SCHEMA = {
    "type": "object",
    "properties": {"people": {"type": "integer", "minimum": 1}, "time": {"type": "string"}},
    "required": ["people"],
    "additionalProperties": False,
}


def webhook_tool(name: str, url: str, **extra) -> dict:
    return {"name": name, "description": f"The {name} tool.", "parameters": BOOKING_SCHEMA, "url": url, **extra}


@pytest.fixture
def tools_file(settings, webhooks, monkeypatch) -> Path:
    """A tools file in the data directory, written before the server starts."""
    base, _ = webhooks
    monkeypatch.setenv("BOOKING_SECRET", "s3cret")
    path = Path(settings.tools_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tools = [
        webhook_tool("book_table", f"{base}/book", headers={"Authorization": "Bearer ${BOOKING_SECRET}"}),
        webhook_tool("check_availability", f"{base}/check"),
        webhook_tool("failing_tool", f"{base}/fail"),
        webhook_tool("slow_tool", f"{base}/slow", timeout=0.5),
        webhook_tool("redirecting_tool", f"{base}/loop", headers={"X-Api-Key": "${BOOKING_SECRET}"}),
        webhook_tool("endless_tool", f"{base}/endless", timeout=5),
    ]
    path.write_text(json.dumps({"tools": tools}))
    return path


def sent_tools(fake_upstream, request: int = -1) -> list[str]:
    return [tool["function"]["name"] for tool in fake_upstream.requests[request].body.get("tools") or []]


def text_of(result) -> str:
    return result.text


def tool_call_deltas(result) -> list[dict]:
    return [
        c["choices"][0]["delta"]["tool_calls"]
        for c in result.chunks
        if c.get("choices") and "tool_calls" in c["choices"][0]["delta"]
    ]


# The loop -----------------------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_one_pass_without_a_tool_call_is_the_plain_stream_with_the_tools_offered(
    tools_file, http_server, base_url, fake_upstream, services
):
    result = await stream(base_url, "/chat/completions", {"messages": [USER]})
    assert text_of(result) == "word0 word1 word2 word3 word4 " and result.events[-1] == "[DONE]"
    assert {"book_table", "search_knowledge_base", "current_time"} <= set(sent_tools(fake_upstream))
    assert services.request_log.recent()[-1]["passes"] == 1


@pytest.mark.gen_test(timeout=60)
async def test_a_streamed_tool_call_runs_and_the_caller_sees_one_continuous_answer(
    tools_file, http_server, base_url, fake_upstream, services, webhooks
):
    _, hooks = webhooks
    fake_upstream.script = [
        ScriptedTurn("Let me check that.", [("book_table", {"people": 2, "time": "20:00"})]),
        ScriptedTurn("Your table for two is booked."),
    ]
    body = {"messages": [USER], "stream_options": {"include_usage": True}}
    result = await stream(base_url, "/chat/completions", body)
    assert text_of(result) == "Let me check that. Your table for two is booked."
    assert tool_call_deltas(result) == []  # server tool calls never reach the caller
    chunks = result.chunks
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert [c["choices"][0]["delta"].get("role") for c in chunks if c["choices"]].count("assistant") == 1
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"] and result.events.count("[DONE]") == 1
    usage = chunks[-1]["usage"]  # summed over the two passes (the fake counts 3 prompt tokens a pass)
    assert usage["prompt_tokens"] == 6 and usage["total_tokens"] == 6 + usage["completion_tokens"] > 6 + 6
    # The webhook got the arguments and the secret from the environment; the second pass got the result.
    assert hooks.received[0]["body"] == {"people": 2, "time": "20:00"}
    assert hooks.received[0]["headers"]["Authorization"] == "Bearer s3cret"
    second = fake_upstream.requests[1].body["messages"]
    assert second[-2]["tool_calls"][0]["function"] == {
        "name": "book_table",
        "arguments": '{"people": 2, "time": "20:00"}',
    }
    assert json.loads(second[-1]["content"]) == {"booking": "confirmed", "people": 2}
    record = services.request_log.recent()[-1]
    assert record["passes"] == 2 and record["tool_calls"][0]["name"] == "book_table"
    assert record["tool_calls"][0]["outcome"] == "ok" and record["tool_calls"][0]["source"] == "webhook"


@pytest.mark.gen_test(timeout=60)
async def test_five_passes_and_the_limit_ends_cleanly(tools_file, http_server, base_url, fake_upstream, services):
    keeps_calling = [ScriptedTurn(f"Step {n}.", [("check_availability", {"people": n})]) for n in range(1, 6)]
    fake_upstream.script = [*keeps_calling, ScriptedTurn("never reached")]
    result = await stream(base_url, "/chat/completions", {"messages": [USER]})
    assert text_of(result) == "Step 1. Step 2. Step 3. Step 4. Step 5."
    assert len(fake_upstream.requests) == 5  # TOOL_PASSES
    assert "check_availability" not in sent_tools(fake_upstream, 4)  # the last pass is asked to answer
    chunks = result.chunks
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and result.events[-1] == "[DONE]"
    record = services.request_log.recent()[-1]
    assert record["passes"] == 5 and len(record["tool_calls"]) == 4 and record["outcome"] == "ok"


@pytest.mark.gen_test(timeout=60)
async def test_parallel_calls_run_concurrently(tools_file, http_server, base_url, fake_upstream, webhooks):
    _, hooks = webhooks
    hooks.delay = 0.3
    fake_upstream.script = [
        ScriptedTurn("", [("book_table", {"people": 2}), ("check_availability", {"people": 4})]),
        ScriptedTurn("Both done."),
    ]
    result = await stream(base_url, "/chat/completions", {"messages": [USER]})
    assert text_of(result) == "Both done." and hooks.most_in_flight == 2
    results = [m for m in fake_upstream.requests[1].body["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in results] == ["call_t1_0", "call_t1_1"]


@pytest.mark.gen_test(timeout=60)
async def test_failures_timeouts_and_invalid_arguments_go_back_to_the_model(
    tools_file, http_server, base_url, fake_upstream, services
):
    fake_upstream.script = [
        ScriptedTurn(
            "",
            [
                ("failing_tool", {"people": 1}),
                ("slow_tool", {"people": 1}),
                ("book_table", {"people": "two"}),
                ("book_table", '{"people": 2'),
                ("no_such_tool", {}),
            ],
        ),
        ScriptedTurn("Sorry, that did not work."),
    ]
    result = await stream(base_url, "/chat/completions", {"messages": [USER]})
    assert text_of(result) == "Sorry, that did not work." and result.events[-1] == "[DONE]", [
        c.get("choices") or c for c in result.chunks
    ]
    assert not [c for c in result.chunks if "error" in c]
    results = [
        json.loads(m["content"])["error"] for m in fake_upstream.requests[1].body["messages"] if m["role"] == "tool"
    ]
    assert "HTTP 500" in results[0]
    assert "within 0.5 s" in results[1]
    assert "people" in results[2] and "is not of type 'integer'" in results[2]
    assert "not valid JSON" in results[3]
    assert "no tool named" in results[4]
    outcomes = [(c["name"], c["outcome"], c["error"]) for c in services.request_log.recent()[-1]["tool_calls"]]
    assert [o[1] for o in outcomes] == ["error"] * 5 and outcomes[1][2] == "timeout"


# Bounds: secrets, sizes, counts ---------------------------------------------------------------------------------------


def tool_results(fake_upstream, request: int = 1) -> list[str]:
    return [m["content"] for m in fake_upstream.requests[request].body["messages"] if m["role"] == "tool"]


@pytest.mark.gen_test(timeout=60)
async def test_a_webhook_that_redirects_forever_keeps_its_secret_header_out_of_the_log(
    tools_file, http_server, base_url, fake_upstream, services, caplog
):
    fake_upstream.script = [ScriptedTurn("", [("redirecting_tool", {"people": 2})]), ScriptedTurn("It failed.")]
    result = await stream(base_url, "/chat/completions", {"messages": [USER]})
    assert result.text == "It failed."
    assert json.loads(tool_results(fake_upstream)[0]) == {"error": "the service behind this tool could not be reached"}
    warnings = [r.getMessage() for r in caplog.records if r.name == "llmserver.tools"]
    assert any("redirecting_tool" in w and "TooManyRedirects" in w and "/hooks/loop" in w for w in warnings)
    assert "s3cret" not in caplog.text


@pytest.mark.gen_test(timeout=60)
async def test_an_endless_compressed_webhook_body_is_read_only_as_far_as_the_cap(
    tools_file, http_server, base_url, fake_upstream, services, webhooks
):
    _, hooks = webhooks
    fake_upstream.script = [ScriptedTurn("", [("endless_tool", {"people": 2})]), ScriptedTurn("Done.")]
    result = await stream(base_url, "/chat/completions", {"messages": [USER]})
    assert result.text == "Done."
    content = tool_results(fake_upstream)[0]
    assert content == "a" * 4000 + "… [cut at 4000 characters]"  # TOOL_RESULT_CHARS, within the tool's 5 s
    assert services.request_log.recent()[-1]["tool_calls"][0]["outcome"] == "ok"
    await eventually(hooks.closed.is_set, what="the rest of the body left unread, the connection closed")


@pytest.mark.gen_test(timeout=60)
async def test_calls_past_tool_calls_per_pass_get_an_error_and_do_not_run(
    tools_file, http_server, base_url, fake_upstream, services, webhooks
):
    _, hooks = webhooks
    calls = [("check_availability", {"people": n}) for n in range(1, 13)]
    fake_upstream.script = [ScriptedTurn("", calls), ScriptedTurn("Checked.")]
    result = await stream(base_url, "/chat/completions", {"messages": [USER]})
    assert result.text == "Checked."
    assert sorted(r["body"]["people"] for r in hooks.received) == list(range(1, 9))  # TOOL_CALLS_PER_PASS: 8
    results = tool_results(fake_upstream)
    assert len(results) == 12  # every call answered, in order
    assert all(json.loads(r)["booking"] == "confirmed" for r in results[:8])
    for refused in results[8:]:
        assert json.loads(refused)["error"].startswith("too many calls in one pass")
    outcomes = [(c["outcome"], c["error"]) for c in services.request_log.recent()[-1]["tool_calls"]]
    assert outcomes == [("ok", None)] * 8 + [("error", "too many calls")] * 4


@pytest.mark.gen_test(timeout=60)
async def test_a_failed_calls_error_does_not_quote_huge_arguments_whole(
    tools_file, http_server, base_url, fake_upstream, services
):
    fake_upstream.script = [ScriptedTurn("", [("book_table", {"people": "x" * 500_000})]), ScriptedTurn("Sorry.")]
    result = await stream(base_url, "/chat/completions", {"messages": [USER]})
    assert result.text == "Sorry."
    # The model gets the schema's complaint up to TOOL_RESULT_CHARS, still as JSON it can read.
    message = json.loads(tool_results(fake_upstream)[0])["error"]
    assert message.startswith("invalid arguments at people: 'xxx") and len(message) <= 4001
    assert services.request_log.recent()[-1]["tool_calls"][0]["error"] == "invalid arguments"


@pytest.mark.gen_test(timeout=60)
async def test_tool_names_the_model_invents_share_one_metrics_label(
    tools_file, http_server, base_url, fake_upstream, services
):
    invented = [(f"invented_{n}", {}) for n in range(20)]
    fake_upstream.script = [ScriptedTurn("", [*invented, ("book_table", {"people": 2})]), ScriptedTurn("Hm.")]
    await stream(base_url, "/chat/completions", {"messages": [USER]})
    metrics = (await AsyncHTTPClient().fetch(base_url + "/metrics")).body.decode()
    tools = set(re.findall(r'^llm_tool_seconds_count\{[^}]*tool="([^"]*)"', metrics, re.M))
    assert tools == {"unknown", "book_table"}


@pytest.mark.gen_test(timeout=60)
async def test_caller_tools_pass_through_untouched_beside_the_servers(tools_file, http_server, base_url, fake_upstream):
    caller_tool = {"type": "function", "function": {"name": "transfer_call", "parameters": {"type": "object"}}}
    fake_upstream.script = [ScriptedTurn("Transferring you.", [("transfer_call", {"to": "reception"})])]
    result = await stream(base_url, "/chat/completions", {"messages": [USER], "tools": [caller_tool]})
    calls = tool_call_deltas(result)
    assert calls[0][0]["function"]["name"] == "transfer_call" and calls[0][0]["index"] == 0
    arguments = "".join(part[0]["function"].get("arguments", "") for part in calls)
    assert json.loads(arguments) == {"to": "reception"}
    assert result.chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert sent_tools(fake_upstream)[0] == "transfer_call" and len(fake_upstream.requests) == 1


@pytest.mark.gen_test(timeout=60)
async def test_a_callers_tool_of_the_same_name_wins(tools_file, http_server, base_url, fake_upstream, caplog):
    caller_tool = {"type": "function", "function": {"name": "book_table", "parameters": {"type": "object"}}}
    fake_upstream.script = [ScriptedTurn("", [("book_table", {"people": 3})])]
    with caplog.at_level(logging.INFO, logger="llmserver.tools"):
        result = await stream(base_url, "/chat/completions", {"messages": [USER], "tools": [caller_tool]})
    assert sent_tools(fake_upstream).count("book_table") == 1
    assert tool_call_deltas(result)[0][0]["function"]["name"] == "book_table"  # streamed to the caller
    assert "the caller's own tool of that name is used" in caplog.text


@pytest.mark.gen_test(timeout=60)
async def test_a_turn_calling_server_and_caller_tools(tools_file, http_server, base_url, fake_upstream, services):
    """Defined behaviour: the server runs its calls at once and remembers them; the caller gets its own calls (from
    index 0) and finish_reason tool_calls; when it comes back with its results, the server's exchange is spliced in
    before its calls, so the model sees the whole turn."""
    caller_tool = {"type": "function", "function": {"name": "transfer_call", "parameters": {"type": "object"}}}
    fake_upstream.script = [
        ScriptedTurn("", [("book_table", {"people": 2}), ("transfer_call", {"to": "desk"})]),
        ScriptedTurn("Booked, and you are being transferred."),
    ]
    body = {"messages": [USER], "tools": [caller_tool], "context": CONTEXT}
    result = await stream(base_url, "/chat/completions", body)
    calls = tool_call_deltas(result)
    assert {part[0]["function"].get("name") for part in calls} - {None} == {"transfer_call"}
    assert {part[0]["index"] for part in calls} == {0}
    assert result.chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    caller_call = {
        "id": "call_t1_1",
        "type": "function",
        "function": {"name": "transfer_call", "arguments": '{"to": "desk"}'},
    }
    follow_up = [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [caller_call]},
        {"role": "tool", "tool_call_id": "call_t1_1", "content": "transferred"},
    ]
    await stream(base_url, "/chat/completions", {"messages": follow_up, "tools": [caller_tool], "context": CONTEXT})
    sent = fake_upstream.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["function"]["name"] == "book_table" and sent[3] == follow_up[1]


@pytest.mark.gen_test(timeout=60)
async def test_non_streaming_gives_the_same_final_message(tools_file, http_server, base_url, fake_upstream):
    fake_upstream.script = [ScriptedTurn("Let me check.", [("book_table", {"people": 2})]), ScriptedTurn("Booked.")]
    response = await post(base_url, "/chat/completions", {"messages": [USER], "stream": False})
    completion = json_of(response)
    message = completion["choices"][0]["message"]
    assert message["content"] == "Let me check. Booked." and "tool_calls" not in message
    assert completion["choices"][0]["finish_reason"] == "stop"
    usage = completion["usage"]  # summed over the two passes (the fake counts 3 prompt tokens a pass)
    assert usage["prompt_tokens"] == 6 and usage["total_tokens"] == 6 + usage["completion_tokens"]
    # The same answer as the stream, because it is the stream, collected: the upstream was asked to stream.
    assert all(request.body["stream"] is True for request in fake_upstream.requests)


@pytest.mark.gen_test(timeout=60)
async def test_tool_choice_none_and_endpoints_without_tools_get_none(tools_file, http_server, base_url, fake_upstream):
    await stream(base_url, "/chat/completions", {"messages": [USER], "tool_choice": "none"})
    assert sent_tools(fake_upstream) == []
    await stream(base_url, "/rag/chat/completions", {"messages": [USER]})
    assert "search_knowledge_base" in sent_tools(fake_upstream)


@pytest.mark.gen_test(timeout=60)
async def test_the_openai_sdk_sees_a_clean_stream(tools_file, http_server, base_url, fake_upstream):
    fake_upstream.script = [ScriptedTurn("One moment.", [("book_table", {"people": 2})]), ScriptedTurn("Done.")]
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="sk-anything", max_retries=0)
    try:
        async with client.chat.completions.stream(model="m", messages=[USER]) as events:
            final = await events.get_final_completion()
    finally:
        await client.close()
    assert final.choices[0].message.content == "One moment. Done." and not final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "stop"


# Barge-in -----------------------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_disconnect_while_a_tool_runs_cancels_it_and_the_upstream(
    tools_file, http_server, base_url, fake_upstream, webhooks, services
):
    _, hooks = webhooks
    fake_upstream.script = [ScriptedTurn("Hold on.", [("book_table", {"people": 2})])]
    hooks.delay = 30
    client = RawClient(base_url)
    await client.send("/chat/completions", {"messages": [USER], "stream": True})
    await client.read_until(b"Hold")
    await eventually(lambda: hooks.received, what="the webhook got the call")
    left = time.perf_counter()
    client.close()
    await asyncio.wait_for(hooks.closed.wait(), 5)
    assert time.perf_counter() - left < 0.1  # the webhook request was aborted
    await eventually(lambda: services.request_log.in_flight == 0, what="every request finished")
    assert services.request_log.recent()[-1]["outcome"] == "cancelled"
    assert len(fake_upstream.requests) == 1  # no second pass


# MCP ----------------------------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=90)
async def test_mcp_tools_over_http_and_a_server_down_at_start_that_comes_back(
    settings, http_server, base_url, fake_upstream, services
):
    port = free_port()
    Path(settings.tools_path).parent.mkdir(parents=True, exist_ok=True)
    servers = [{"name": "weather", "url": f"http://127.0.0.1:{port}/mcp"}]
    Path(settings.tools_path).write_text(json.dumps({"mcp_servers": servers}))
    await services.reload_tools()
    admin = bearer(base_url, services.admin_token)
    await eventually(lambda: services.tools.states()[-1]["error"] != "not connected yet", what="the first attempt")
    state = json.loads((await admin.fetch("GET", "/admin/api/tools")).body)
    weather = next(s for s in state["sources"] if s["source"] == "mcp:weather")
    assert not weather["reachable"] and "get_weather" not in {t["name"] for t in state["tools"]}
    assert weather["error"] == "connection refused"  # the root cause, not the SDK's ExceptionGroup
    with serving_http(port):
        await admin.fetch("POST", "/admin/api/tools/reload")
        await eventually(lambda: "get_weather" in services.tools.all_tools(), timeout=20)
        fake_upstream.script = [ScriptedTurn("", [("get_weather", {"city": "Paris"})]), ScriptedTurn("Cloudy.")]
        result = await stream(base_url, "/chat/completions", {"messages": [USER]})
        assert result.text == "Cloudy."
        tool_message = fake_upstream.requests[-1].body["messages"][-1]
        assert tool_message["content"] == "18 degrees and cloudy in Paris"
        tried = json.loads(
            (await admin.fetch("POST", "/admin/api/tools/broken/call", {"arguments": {"reason": "x"}})).body
        )
        assert not tried["ok"] and "error" in tried["result"]
    await eventually(
        lambda: "get_weather" not in services.tools.all_tools(), timeout=20
    )  # gone with its server, noticed by itself


@pytest.mark.gen_test(timeout=90)
async def test_mcp_tools_over_stdio(settings, http_server, base_url, fake_upstream, services):
    Path(settings.tools_path).parent.mkdir(parents=True, exist_ok=True)
    Path(settings.tools_path).write_text(json.dumps({"mcp_servers": [{"name": "local", **STDIO_COMMAND}]}))
    await services.reload_tools()
    await eventually(lambda: "slow_echo" in services.tools.all_tools(), timeout=20)
    tried = await bearer(base_url, services.admin_token).fetch(
        "POST", "/admin/api/tools/slow_echo/call", {"arguments": {"text": "hi", "seconds": 0}}
    )
    assert json.loads(tried.body) | {"ms": 0} == {
        "name": "slow_echo",
        "ok": True,
        "ms": 0,
        "result": "hi",
        "error": None,
    }


@pytest.mark.gen_test(timeout=90)
async def test_an_mcp_tools_error_quoting_huge_arguments_is_bounded_in_the_record(
    settings, http_server, base_url, fake_upstream, services
):
    Path(settings.tools_path).parent.mkdir(parents=True, exist_ok=True)
    Path(settings.tools_path).write_text(json.dumps({"mcp_servers": [{"name": "local", **STDIO_COMMAND}]}))
    await services.reload_tools()
    await eventually(lambda: "broken" in services.tools.all_tools(), timeout=20)
    huge = "x" * 500_000  # the tool's error says it back
    fake_upstream.script = [ScriptedTurn("", [("broken", {"reason": huge})]), ScriptedTurn("It broke.")]
    result = await stream(base_url, "/chat/completions", {"messages": [USER]})
    assert result.text == "It broke."
    error = services.request_log.recent()[-1]["tool_calls"][0]["error"]
    assert "xxx" in error and len(error) <= 201
    message = json.loads(fake_upstream.requests[1].body["messages"][-1]["content"])["error"]
    assert "xxx" in message and len(message) <= 4001


@pytest.mark.gen_test(timeout=60)
async def test_a_tools_filler_is_said_before_it_runs_in_the_callers_language(
    settings, webhooks, http_server, base_url, fake_upstream, services
):
    base, _ = webhooks
    filler = {"en": "Let me check your booking.", "zh": "我帮您查一下预订。"}
    Path(settings.tools_path).parent.mkdir(parents=True, exist_ok=True)
    Path(settings.tools_path).write_text(json.dumps({"tools": [webhook_tool("book_table", f"{base}/book",
                                                                            filler=filler)]}))  # fmt: skip
    await services.reload_tools()
    for question, said in (
        ("Is my table booked?", "Let me check your booking. Booked."),
        ("订好了吗？", "我帮您查一下预订。Booked."),
    ):
        fake_upstream.script = [ScriptedTurn("", [("book_table", {"people": 2})]), ScriptedTurn("Booked.")]
        result = await stream(base_url, "/chat/completions", {"messages": [{"role": "user", "content": question}]})
        assert result.text == said
    # The model said something itself first: no filler.
    fake_upstream.script = [ScriptedTurn("One moment.", [("book_table", {"people": 2})]), ScriptedTurn("Booked.")]
    result = await stream(base_url, "/chat/completions", {"messages": [USER]})
    assert result.text == "One moment. Booked."


def test_a_filler_that_is_not_text_refuses_the_tools_file(tmp_path):
    path = tmp_path / "tools.json"
    path.write_text(json.dumps({"tools": [webhook_tool("t", "http://h/x", filler={"english": "hi"})]}))
    with pytest.raises(ToolsFileError) as raised:
        load_tools_file(str(path))
    assert "filler" in str(raised.value)


# Memory -------------------------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_tool_exchanges_are_spliced_into_the_next_turn_of_the_conversation(
    tools_file, http_server, base_url, fake_upstream, services
):
    fake_upstream.script = [
        ScriptedTurn("Checking.", [("check_availability", {"people": 2})]),
        ScriptedTurn("A table for two is free at eight."),
    ]
    first = [{"role": "system", "content": "You are a host."}, {"role": "user", "content": "Is there a table for two?"}]
    body = {"messages": first, "context": CONTEXT, "turn_id": 1}
    await stream(base_url, "/chat/completions", body)
    # The engine's next request: its history has the words, not the tool exchange.
    second = [
        *first,
        {"role": "assistant", "content": "Checking. A table for two is free at eight."},
        {"role": "user", "content": "What did the booking system say exactly?"},
    ]
    await stream(base_url, "/chat/completions", {"messages": second, "context": CONTEXT, "turn_id": 2})
    sent = fake_upstream.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert sent[2]["tool_calls"][0]["function"]["name"] == "check_availability" and sent[2]["content"] is None
    assert json.loads(sent[3]["content"])["booking"] == "confirmed"
    # Sent again as the caller now has it: not duplicated.
    await stream(base_url, "/chat/completions", {"messages": sent, "context": CONTEXT})
    assert [m["role"] for m in fake_upstream.requests[-1].body["messages"]].count("tool") == 1
    # Another conversation sees none of it; the admin API reads and clears it.
    await stream(base_url, "/chat/completions", {"messages": second, "context": {**CONTEXT, "channel": "other"}})
    assert [m["role"] for m in fake_upstream.requests[-1].body["messages"]].count("tool") == 0
    admin = bearer(base_url, services.admin_token)
    listed = json.loads((await admin.fetch("GET", "/admin/api/conversations")).body)["conversations"]
    key = 'anon:agora:["app1","u42","room7"]'
    assert listed[0]["key"] == key and listed[0]["messages"] == 2
    path = "/admin/api/conversations/" + urllib.parse.quote(key, safe="")
    one = json.loads((await admin.fetch("GET", path)).body)
    assert one["exchanges"][0]["after_user"] == "Is there a table for two?"
    assert (await admin.fetch("DELETE", path)).code == 204
    assert (await admin.fetch("GET", path)).code == 404


# Offline ------------------------------------------------------------------------------------------------------------


@pytest.mark.settings(upstream="offline", api_key=None, base_url=None, server_tools=("chat", "rag"))
@pytest.mark.gen_test(timeout=60)
async def test_the_offline_responder_calls_the_built_in_tools(http_server, base_url, services):
    result = await stream(
        base_url, "/chat/completions", {"messages": [{"role": "user", "content": "What time is it in Tokyo?"}]}
    )
    assert result.text.startswith("Let me check the time. It is ") and "Asia/Tokyo" in result.text
    record = services.request_log.recent()[-1]
    assert record["passes"] == 2 and record["tool_calls"][0]["name"] == "current_time"
    looked_up = await stream(
        base_url, "/chat/completions", {"messages": [{"role": "user", "content": "Look up how to connect Agora."}]}
    )
    # The README's example: answered from the passage on connecting Agora ("Look up" once matched "up to ... seconds"
    # in "Stopping the server").
    assert 'The knowledge base says, in "Connecting Agora' in looked_up.text, looked_up.text
