"""Several upstreams, without HTTP in front of the server: the relay over the router, the real upstream clients
against several fake upstreams the test starts (slow first tokens, stalls, 500s, 429 with Retry-After, refused
connections, streams cut mid-way), a recording sink, and a request record as the trace."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import pytest

from fakes.upstream import FakeUpstream, ScriptedTurn
from llmserver.protocol.errors import ApiError
from llmserver.request_log import RequestLog
from llmserver.services import build_router, build_upstream, upstream_configs
from llmserver.settings import Settings
from llmserver.tools.registry import ToolRegistry
from llmserver.upstream.relay import Relay, RelayPolicy
from llmserver.upstream.routing import AUTO_FIRST_DELAY, HealthPolicy, HedgePolicy, Route, Router
from llmserver.upstream.tool_loop import ToolUse
from llmserver.upstream.upstreams_file import UpstreamConfig, UpstreamsFileError, load_upstreams_file
from tests.client import eventually
from tests.llmserver.upstream.test_relay import ClockTools
from tests.sinks import RecordingSink

USER = {"role": "user", "content": "What time is it?"}
BODY = {"model": "gpt-4o-mini", "stream": True, "messages": [USER]}
SETTINGS = Settings(upstream="openai", connect_timeout=2.0, read_timeout=10.0)


class Events:
    """What the router told its observer (as the metrics hear it)."""

    def __init__(self) -> None:
        self.heard: list[tuple] = []

    def __getattr__(self, name: str):
        return lambda *args: self.heard.append((name, *args))

    def of(self, name: str) -> list[tuple]:
        return [event[1:] for event in self.heard if event[0] == name]


@pytest.fixture
def fakes(io_loop):
    """Fake upstreams started on demand, named a, b, c …, stopped afterwards."""
    started: list[FakeUpstream] = []

    def start(count: int) -> list[FakeUpstream]:
        for _ in range(count):
            started.append(FakeUpstream().start())
        return started[-count:]

    yield start
    for fake in started:
        io_loop.run_sync(fake.stop)


@pytest.fixture
def refused_url():
    """A port bound but not listening: connecting to it is refused, and no other test can take it meanwhile."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


@pytest.fixture
def routed(io_loop):
    """Makes a relay over a router of the test's upstreams (configs or URLs); closes their clients afterwards."""
    routers: list[Router] = []

    def make(
        *upstreams: UpstreamConfig | str,
        hedge: HedgePolicy | None = None,
        retries: int = 0,
        health: HealthPolicy | None = None,
        events: Events | None = None,
        **policy,
    ) -> Relay:
        configs = [
            u if isinstance(u, UpstreamConfig) else UpstreamConfig(chr(ord("a") + i), u, "sk-test")
            for i, u in enumerate(upstreams)
        ]
        observer = events or Events()
        routes = [Route(c, build_upstream(c, SETTINGS), health or HealthPolicy(), observer) for c in configs]
        router = Router(routes, retries=retries, hedge=hedge, observer=observer)
        routers.append(router)
        return Relay(router, RelayPolicy(**policy))

    yield make
    for router in routers:
        io_loop.run_sync(router.aclose)


@pytest.fixture
def record():
    return RequestLog().begin("req_test", "chat")


def attempts(record) -> list[tuple[str, str]]:
    return [(attempt.upstream, attempt.outcome) for attempt in record.attempts]


async def answer(relay: Relay, record, body: dict | None = None) -> RecordingSink:
    sink = RecordingSink()
    await relay.stream(body or BODY, None, sink, record)
    assert sink.events[-1] == "[DONE]"
    return sink


# Fallback before the first byte -------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_failing_upstream_passes_the_request_to_the_next_at_once(routed, fakes, record):
    first, second = fakes(2)
    first.behaviour.status = 500
    sink = await answer(routed(first.base_url, second.base_url), record)
    assert sink.text == "word0 word1 word2 word3 word4 "
    assert record.upstream == "b" and attempts(record) == [("a", "failed"), ("b", "won")]
    assert record.attempts[0].code == "upstream_error" and record.upstream_attempts == 2 and not record.hedged


@pytest.mark.gen_test
async def test_a_refused_connection_and_a_429_move_on_without_waiting_for_retry_after(
    routed, fakes, refused_url, record
):
    limited, healthy = fakes(2)
    limited.behaviour.status = 429
    limited.behaviour.retry_after = "30"
    started = asyncio.get_running_loop().time()
    await answer(routed(refused_url, limited.base_url, healthy.base_url), record)
    assert asyncio.get_running_loop().time() - started < 5  # not the 30 s the 429 asked for: another upstream was free
    assert attempts(record) == [("a", "failed"), ("b", "failed"), ("c", "won")]
    assert [attempt.code for attempt in record.attempts[:2]] == ["upstream_unreachable", "fake"]  # the 429's own code


@pytest.mark.gen_test
async def test_an_upstreams_own_first_token_deadline_moves_the_request_on(routed, fakes, record):
    slow, fast = fakes(2)
    slow.behaviour.first_chunk_delay = 5.0
    relay = routed(UpstreamConfig("slow", slow.base_url, "sk", first_token_timeout=0.2), fast.base_url)
    await answer(relay, record)
    assert attempts(record) == [("slow", "failed"), ("b", "won")] and record.attempts[0].code == "first_token_deadline"
    await asyncio.wait_for(slow.last.closed.wait(), 5)  # its request was closed, not left running


@pytest.mark.gen_test
async def test_a_refused_request_is_the_callers_answer_and_goes_nowhere_else(routed, fakes, record):
    first, second = fakes(2)
    first.behaviour.status = 400
    first.behaviour.error_message = "Unrecognized request argument supplied: call"
    with pytest.raises(ApiError) as raised:
        await answer(routed(first.base_url, second.base_url), record)
    assert raised.value.status == 400 and "call" in raised.value.message
    assert not second.requests


@pytest.mark.gen_test
async def test_after_the_first_chunk_a_broken_stream_is_the_callers_error_never_a_second_answer(routed, fakes, record):
    first, second = fakes(2)
    first.behaviour.cut_after = 2
    sink = RecordingSink()
    with pytest.raises(ApiError) as raised:
        await routed(first.base_url, second.base_url).stream(BODY, None, sink, record)
    assert raised.value.code == "upstream_stream_broken" and sink.text == "word0 word1 "
    assert not second.requests


@pytest.mark.gen_test
async def test_when_every_upstream_fails_the_last_error_is_the_callers(routed, fakes, refused_url, record):
    (failing,) = fakes(1)
    failing.behaviour.status = 503
    with pytest.raises(ApiError) as raised:
        await answer(routed(refused_url, failing.base_url), record)
    assert raised.value.status == 502 and attempts(record) == [("a", "failed"), ("b", "failed")]


@pytest.mark.gen_test
async def test_retries_go_round_the_upstreams_again_after_a_back_off(routed, fakes, record):
    first, second = fakes(2)
    first.behaviour.drop_connections = 0
    first.behaviour.status = second.behaviour.status = 503
    first.behaviour.retry_after = second.behaviour.retry_after = "0.5"  # the back-off the upstreams ask for

    async def recover():
        await eventually(lambda: len(second.requests) == 1, what="both upstreams tried once")
        first.behaviour.status = 200

    recovering = asyncio.ensure_future(recover())
    await answer(routed(first.base_url, second.base_url, retries=1), record)
    await recovering
    assert attempts(record) == [("a", "failed"), ("b", "failed"), ("a", "won")]


@pytest.mark.gen_test
async def test_stream_false_the_tool_loop_and_the_model_list_take_the_same_way(routed, fakes, refused_url, record):
    (healthy,) = fakes(1)
    relay = routed(refused_url, healthy.base_url)
    completion = await relay.complete({"model": "m", "messages": [USER]}, None, record)
    assert completion["choices"][0]["message"]["content"] and record.upstream == "b"

    healthy.script = [ScriptedTurn("Let me check.", [("current_time", {})]), ScriptedTurn("It is nine.")]
    registry = ToolRegistry([ClockTools()])
    tooled = RequestLog().begin("req_tools", "chat")
    sink = RecordingSink()
    await relay.stream(BODY, None, sink, tooled, ToolUse(registry.offered([]), registry, 5))
    assert sink.text == "Let me check. It is nine." and tooled.passes == 2
    assert [a.upstream for a in tooled.attempts] == ["a", "b", "a", "b"]  # each pass (until a is skipped)

    models = await relay.router.list_models(None)
    assert models["data"][0]["id"] == "fake-model"


@pytest.mark.gen_test
async def test_an_upstream_gets_its_own_model_name_and_its_own_key(routed, fakes, record):
    first, second = fakes(2)
    first.behaviour.status = 503
    relay = routed(
        UpstreamConfig("a", first.base_url, "sk-first"),
        UpstreamConfig("b", second.base_url, None, models={"gpt-4o-mini": "llama-3.3-70b", "*": "llama-3.1-8b"}),
    )
    sink = RecordingSink()
    await relay.stream(BODY, "sk-callers-own", sink, record)
    assert first.last.body["model"] == "gpt-4o-mini" and first.last.headers["Authorization"] == "Bearer sk-first"
    assert second.last.body["model"] == "llama-3.3-70b"
    assert second.last.headers["Authorization"] == "Bearer sk-callers-own"  # no key of its own: the caller's
    await relay.stream({**BODY, "model": "gpt-4.1"}, "sk-callers-own", RecordingSink(), record)
    assert second.last.body["model"] == "llama-3.1-8b"


@pytest.mark.gen_test
async def test_an_upstream_at_its_stream_limit_is_passed_over(routed, fakes, record):
    busy, free = fakes(2)
    busy.behaviour.first_chunk_delay = 0.5
    relay = routed(UpstreamConfig("busy", busy.base_url, "sk", max_streams=1), free.base_url)
    held = asyncio.ensure_future(relay.stream(BODY, None, RecordingSink(), RequestLog().begin("held", "chat")))
    await eventually(lambda: busy.requests, what="the first stream reached the busy upstream")
    await answer(relay, record)
    assert record.upstream == "b" and attempts(record) == [("b", "won")]
    await held


# Hedging ------------------------------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_late_first_token_is_hedged_and_the_loser_cancelled_at_once(routed, fakes, record):
    slow, fast = fakes(2)
    slow.behaviour.first_chunk_delay = 5.0
    events = Events()
    relay = routed(slow.base_url, fast.base_url, hedge=HedgePolicy(0.05, budget=1.0), events=events)
    await answer(relay, record)
    assert record.upstream == "b" and record.hedged
    assert sorted(attempts(record)) == [("a", "cancelled"), ("b", "won")]
    await asyncio.wait_for(slow.last.closed.wait(), 1)
    assert slow.last.closed_at - fast.last.opened_at < 1.0  # the loser's connection closed, not left streaming
    assert events.of("hedge_won") == [("b",)] and events.of("attempt_cancelled") == [("a",)]
    assert ("b", True) in events.of("attempt_started")


@pytest.mark.gen_test
async def test_an_answer_before_the_hedging_delay_costs_no_second_request(routed, fakes, record):
    first, second = fakes(2)
    await answer(routed(first.base_url, second.base_url, hedge=HedgePolicy(2.0, budget=1.0)), record)
    assert not second.requests and not record.hedged and attempts(record) == [("a", "won")]


@pytest.mark.gen_test
async def test_a_hedge_that_fails_leaves_the_first_attempt_to_finish(routed, fakes, record):
    slow, failing = fakes(2)
    slow.behaviour.first_chunk_delay = 0.3
    failing.behaviour.status = 500
    await answer(routed(slow.base_url, failing.base_url, hedge=HedgePolicy(0.05, budget=1.0)), record)
    assert record.upstream == "a" and record.hedged
    assert attempts(record) == [("b", "failed"), ("a", "won")]


@pytest.mark.gen_test
async def test_the_budget_bounds_hedges_and_auto_learns_each_upstreams_delay(routed, fakes):
    first, second = fakes(2)
    relay = routed(first.base_url, second.base_url, hedge=HedgePolicy("auto", budget=0.0))
    route = relay.router.routes[0]
    assert route.hedge_delay(relay.router.hedge) == AUTO_FIRST_DELAY  # nothing learned yet
    for number in range(25):
        await answer(relay, RequestLog().begin(f"req_{number}", "chat"))
    learned = route.hedge_delay(relay.router.hedge)
    assert 0 < learned < 0.5  # p90 of 25 quick answers from the fake
    first.behaviour.first_chunk_delay = learned * 20 + 0.2
    record = RequestLog().begin("req_late", "chat")
    await answer(relay, record)
    assert not record.hedged and not second.requests  # a budget of 0: never a second request


@pytest.mark.gen_test
async def test_the_caller_leaving_during_a_hedged_race_cancels_both_attempts(routed, fakes, record):
    first, second = fakes(2)
    first.behaviour.hang = second.behaviour.hang = True
    relay = routed(first.base_url, second.base_url, hedge=HedgePolicy(0.05, budget=1.0))
    task = asyncio.ensure_future(relay.stream(BODY, None, RecordingSink(), record))
    await eventually(lambda: second.requests, what="the hedge started")
    task.cancel()
    await asyncio.wait_for(asyncio.gather(first.last.closed.wait(), second.last.closed.wait()), 5)
    assert sorted(attempts(record)) == [("a", "cancelled"), ("b", "cancelled")]
    assert all(route.in_flight == 0 for route in relay.router.routes)


# Health -------------------------------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_an_upstream_that_keeps_failing_is_skipped_then_probed_back(routed, fakes, refused_url):
    (healthy,) = fakes(1)
    events = Events()
    relay = routed(refused_url, healthy.base_url, health=HealthPolicy(2, 0.3), events=events)
    down = relay.router.routes[0]
    for number in range(2):
        await answer(relay, RequestLog().begin(f"req_{number}", "chat"))
    assert down.health.state == "skipped" and events.of("state_changed") == [("a", "skipped")]
    skipped = RequestLog().begin("req_skipped", "chat")
    await answer(relay, skipped)
    assert attempts(skipped) == [("b", "won")]  # no time lost on it while it is skipped

    await asyncio.sleep(0.35)  # the skip is over: the next request probes it (and it is still down)
    probe = RequestLog().begin("req_probe", "chat")
    await answer(relay, probe)
    assert attempts(probe) == [("a", "failed"), ("b", "won")] and down.health.state == "skipped"
    assert down.health.skipped_until - asyncio.get_running_loop().time() > 0.3  # the next skip lasts longer


@pytest.mark.gen_test
async def test_a_probe_that_succeeds_makes_the_upstream_healthy_again(routed, fakes):
    recovering, other = fakes(2)
    recovering.behaviour.status = 500
    relay = routed(recovering.base_url, other.base_url, health=HealthPolicy(1, 0.2))
    await answer(relay, RequestLog().begin("req_1", "chat"))
    assert relay.router.routes[0].health.state == "skipped"
    recovering.behaviour.status = 200
    await asyncio.sleep(0.25)
    record = RequestLog().begin("req_2", "chat")
    await answer(relay, record)
    assert record.upstream == "a" and relay.router.routes[0].health.state == "healthy"


@pytest.mark.gen_test
async def test_when_every_upstream_is_skipped_they_are_still_tried(routed, fakes):
    (only,) = fakes(1)
    only.behaviour.status = 500
    relay = routed(only.base_url, health=HealthPolicy(1, 60))
    with pytest.raises(ApiError):
        await answer(relay, RequestLog().begin("req_1", "chat"))
    only.behaviour.status = 200
    record = RequestLog().begin("req_2", "chat")
    await answer(relay, record)  # skipped for a minute, but the only one: better tried than no answer
    assert record.upstream == "a"


@pytest.mark.gen_test
async def test_status_says_each_upstreams_state_and_what_it_learned(routed, fakes, refused_url):
    (healthy,) = fakes(1)
    relay = routed(refused_url, healthy.base_url, health=HealthPolicy(1, 30), hedge=HedgePolicy("auto"))
    await answer(relay, RequestLog().begin("req_1", "chat"))
    status = relay.router.status()
    assert status["hedging"] == "auto" and status["hedge_budget"] == 0.1
    down, up = status["upstreams"]
    assert (down["name"], down["state"], down["failures_in_a_row"]) == ("a", "skipped", 1)
    assert 0 < down["skipped_for_seconds"] <= 30 and up["state"] == "healthy"
    assert up["hedge_after_ms"] == AUTO_FIRST_DELAY * 1000  # not enough answers yet to learn from
    assert "sk-test" not in json.dumps(status)


# The upstreams file -------------------------------------------------------------------------------------------------


def test_the_upstreams_file_is_read_with_secrets_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GROQ_KEY", "gsk-secret")
    path = tmp_path / "upstreams.json"
    path.write_text(
        json.dumps(
            {
                "upstreams": [
                    {"name": "openai", "base_url": "https://api.openai.com/v1", "first_token_timeout": 2.5},
                    {
                        "name": "groq",
                        "base_url": "https://api.groq.com/openai/v1",
                        "api_key": "${GROQ_KEY}",
                        "models": {"*": "llama-3.1-8b-instant"},
                        "max_streams": 20,
                    },
                ]
            }
        )
    )
    first, second = load_upstreams_file(str(path))
    assert (first.name, first.api_key, first.first_token_timeout) == ("openai", None, 2.5)
    assert (second.api_key, second.max_streams, second.model_for("gpt-4o")) == (
        "gsk-secret",
        20,
        "llama-3.1-8b-instant",
    )
    assert "gsk-secret" not in repr(second)


@pytest.mark.parametrize(
    "content, problem",
    [
        ({"upstreams": [{"name": "a", "base_url": "http://x/v1"}, {"name": "a", "base_url": "http://y/v1"}]},
         "another upstream is named 'a'"),
        ({"upstreams": [{"name": "a"}]}, "'base_url' is a required property"),
        ({"upstreams": [{"name": "a", "base_url": "ftp://x"}]}, "does not match"),
        ({"upstreams": [{"name": "a", "base_url": "${NOT_SET_ANYWHERE}"}]}, "${NOT_SET_ANYWHERE}, which is not set"),
        ({"upstreams": [{"name": "a", "base_url": "http://x/v1", "api_key": "${NOT_SET_ANYWHERE}"}]}, "api_key"),
        ({"upstreams": []}, "should be non-empty"),
        ({"upstreams": [{"name": "a", "base_url": "http://x/v1", "first_token_timeout": 0}]}, "first_token_timeout"),
        ({"upstreams": [{"name": "a", "base_url": "http://x/v1", "colour": "red"}]}, "'colour' was unexpected"),
        ("not json", "not valid JSON"),
    ],
)  # fmt: skip
def test_an_upstreams_file_with_a_problem_is_refused_naming_it(tmp_path, content, problem):
    path = tmp_path / "upstreams.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(UpstreamsFileError) as raised:
        load_upstreams_file(str(path))
    assert str(path) in str(raised.value) and problem in str(raised.value)


# What a review found (each failed before its fix) -------------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_probe_answered_by_a_whole_completion_makes_the_upstream_healthy_again(routed, fakes, record):
    recovering, other = fakes(2)
    recovering.behaviour.status = 500
    relay = routed(recovering.base_url, other.base_url, health=HealthPolicy(1, 0.2))
    await answer(relay, RequestLog().begin("req_1", "chat"))
    recovering.behaviour.status = 200
    await asyncio.sleep(0.25)
    await relay.complete({"model": "m", "messages": [USER]}, None, record)  # the probe: stream false
    assert record.upstream == "a" and relay.router.routes[0].health.state == "healthy"  # it was stuck "probing"


@pytest.mark.gen_test
async def test_successes_between_failures_mean_they_are_not_in_a_row(routed, fakes):
    (flaky,) = fakes(1)
    relay = routed(flaky.base_url, health=HealthPolicy(3, 60))
    for _ in range(3):
        flaky.behaviour.status = 500
        with pytest.raises(ApiError):
            await relay.complete({"model": "m", "messages": [USER]}, None, RequestLog().begin("bad", "chat"))
        flaky.behaviour.status = 200
        await relay.complete({"model": "m", "messages": [USER]}, None, RequestLog().begin("good", "chat"))
    assert relay.router.routes[0].health.state == "healthy"


@pytest.mark.gen_test
async def test_a_probe_that_only_meets_dropped_connections_is_skipped_again_not_stuck(routed, fakes):
    dropping, other = fakes(2)
    dropping.behaviour.status = 500
    relay = routed(dropping.base_url, other.base_url, health=HealthPolicy(1, 0.2))
    await answer(relay, RequestLog().begin("req_1", "chat"))
    dropping.behaviour.status = 200
    dropping.behaviour.drop_connections = 100
    await asyncio.sleep(0.25)
    probe = RequestLog().begin("req_probe", "chat")
    await answer(relay, probe)
    assert probe.upstream == "b" and relay.router.routes[0].health.state == "skipped"  # not "probing" for good
    dropping.behaviour.drop_connections = 0
    await asyncio.sleep(0.45)
    back = RequestLog().begin("req_back", "chat")
    await answer(relay, back)
    assert back.upstream == "a"


@pytest.mark.gen_test
async def test_failures_of_requests_already_in_flight_do_not_lengthen_the_skip(routed, fakes):
    failing, other = fakes(2)
    failing.behaviour.status = 500
    failing.behaviour.header_delay = 0.1  # eight requests in flight when the first failure comes back
    relay = routed(failing.base_url, other.base_url, health=HealthPolicy(1, 10))
    await asyncio.gather(*(answer(relay, RequestLog().begin(f"req_{n}", "chat")) for n in range(8)))
    health = relay.router.routes[0].health
    assert health.skips == 1 and health.skipped_until - asyncio.get_running_loop().time() <= 10


@pytest.mark.gen_test
async def test_fallback_respects_the_next_upstreams_stream_limit(routed, fakes):
    failing, small = fakes(2)
    failing.behaviour.status = 500
    failing.behaviour.header_delay = 0.1
    small.behaviour.first_chunk_delay = 0.3
    relay = routed(failing.base_url, UpstreamConfig("small", small.base_url, "sk", max_streams=2),
                   health=HealthPolicy(100, 10))  # fmt: skip
    results = await asyncio.gather(
        *(answer(relay, RequestLog().begin(f"req_{n}", "chat")) for n in range(6)), return_exceptions=True
    )
    assert len(small.requests) == 2 and sum(isinstance(r, RecordingSink) for r in results) == 2


@pytest.mark.gen_test
async def test_a_hedge_refused_by_its_upstream_leaves_the_first_attempt_to_answer(routed, fakes, record):
    slow, revoked = fakes(2)
    slow.behaviour.first_chunk_delay = 0.3
    revoked.behaviour.status = 401
    relay = routed(slow.base_url, revoked.base_url, hedge=HedgePolicy(0.05, budget=1.0), health=HealthPolicy(1, 60))
    await answer(relay, record)
    assert record.upstream == "a" and attempts(record) == [("b", "failed"), ("a", "won")]
    assert relay.router.routes[1].health.state == "skipped"  # its own key refused: the operator's to fix


@pytest.mark.gen_test
async def test_an_upstream_whose_first_event_is_an_error_passes_the_request_on(routed, fakes, record):
    overloaded, healthy = fakes(2)
    overloaded.behaviour.error_event_at = 0
    await answer(routed(overloaded.base_url, healthy.base_url), record)
    assert record.upstream == "b" and attempts(record) == [("a", "failed"), ("b", "won")]


@pytest.mark.gen_test
async def test_a_back_off_longer_than_the_time_left_is_not_waited_out(routed, fakes, record):
    first, limited = fakes(2)
    first.behaviour.status = 503
    limited.behaviour.status = 429
    limited.behaviour.retry_after = "20"
    started = asyncio.get_running_loop().time()
    with pytest.raises(ApiError) as raised:
        await answer(routed(first.base_url, limited.base_url, retries=2, first_token_timeout=1.0), record)
    assert raised.value.code != "first_token_timeout"  # the upstreams' own failure, not a silent wait for a timeout
    assert asyncio.get_running_loop().time() - started < 1.0


@pytest.mark.gen_test
async def test_a_hung_upstream_passes_the_request_on_within_its_share_of_the_deadline(fakes, record):
    hung, healthy = fakes(2)
    hung.behaviour.hang = True
    configs = [UpstreamConfig("a", hung.base_url, "sk"), UpstreamConfig("b", healthy.base_url, "sk")]
    routes = [Route(c, build_upstream(c, SETTINGS), HealthPolicy(), Events()) for c in configs]
    router = Router(routes, retries=0, first_token_timeout=1.0)  # no deadline of their own: half of it each
    try:
        await answer(Relay(router, RelayPolicy(first_token_timeout=1.0)), record)
    finally:
        await router.aclose()
    assert attempts(record) == [("a", "failed"), ("b", "won")] and record.attempts[0].code == "first_token_deadline"


def test_one_upstream_from_the_environment_names_its_organisation_and_project_as_the_sdk_does(monkeypatch):
    monkeypatch.setenv("OPENAI_ORG_ID", "org-123")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-9")
    (only,) = upstream_configs(Settings(upstream="openai", api_key="sk-own"))
    assert only.headers == {"OpenAI-Organization": "org-123", "OpenAI-Project": "proj-9"}
    assert (only.name, only.base_url, only.api_key) == ("default", "https://api.openai.com/v1", "sk-own")


@pytest.mark.gen_test
async def test_an_upstream_of_the_file_without_a_key_is_called_without_one(routed, fakes, record):
    # Found by a new user: a local server (no key) was skipped when the caller sent none.
    (local,) = fakes(1)
    await answer(routed(UpstreamConfig("local", local.base_url, None)), record)
    assert record.upstream == "local" and "Authorization" not in local.last.headers


@pytest.mark.gen_test
async def test_the_hedge_budget_starts_full_so_the_first_slow_answers_are_hedged(routed, fakes):
    # Found by a new user: with HEDGE_AFTER_MS=200 and one slow upstream, the second request had 3 s of dead air.
    slow, fast = fakes(2)
    slow.behaviour.first_chunk_delay = 2.0
    relay = routed(slow.base_url, fast.base_url, hedge=HedgePolicy(0.05, budget=0.1))
    records = [RequestLog().begin(f"req_{n}", "chat") for n in range(5)]
    for record in records:
        await answer(relay, record)
    assert all(record.hedged and record.upstream == "b" for record in records)


@pytest.mark.gen_test
async def test_the_server_gives_each_of_several_upstreams_a_share_of_the_first_token_deadline():
    # Found in review of the wiring: the router was built without FIRST_TOKEN_TIMEOUT, so no upstream had a deadline.
    configs = (UpstreamConfig("a", "http://127.0.0.1:9/v1", "sk"),
               UpstreamConfig("b", "http://127.0.0.1:9/v1", "sk", first_token_timeout=2.0))  # fmt: skip
    router = build_router(Settings(upstream="openai", first_token_timeout=10.0), configs, Events())
    try:
        assert [route.first_token_timeout for route in router.routes] == [5.0, 2.0]
    finally:
        await router.aclose()
