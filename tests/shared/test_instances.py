"""Two instances sharing one real Redis: what one changes, the other uses; one live log; conflicts found across
them; Redis lost and back."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from fakes.redis_server import free_port
from llmserver.services import StartupError, build_services
from llmserver.shared.redis_state import SharedState, Shipper
from llmserver.tools.memory import Exchange
from tests.audio_files import encode, tone
from tests.client import eventually, stream
from tests.handlers.admin_client import bearer, multipart
from tests.shared.conftest import start_instance, stop_instance

QUESTION = "What is the zebra code for the back gate?"


def injected(fake_upstream) -> str:
    """The system message the RAG endpoint gave the upstream (its knowledge passages)."""
    messages = fake_upstream.requests[-1].body["messages"]
    return "\n".join(m["content"] for m in messages if m["role"] == "system")


async def rag_answer_uses(instance, fake_upstream, words: str) -> bool:
    body = {"messages": [{"role": "user", "content": QUESTION}]}
    result = await stream(instance.base_url, "/rag/chat/completions", body)
    assert result.response.code == 200 and result.events[-1] == "[DONE]"
    return words in injected(fake_upstream)


@pytest.mark.gen_test(timeout=60)
async def test_an_edit_through_one_instance_is_used_by_a_request_through_the_other(instances, fake_upstream):
    a, b = instances
    document = {"id": "zebra", "title": "Back gate", "content": "The zebra code for the back gate is 4471."}
    assert not await rag_answer_uses(b, fake_upstream, "4471")
    created = await bearer(a.base_url, a.services.admin_token).fetch("POST", "/admin/api/knowledge", document)
    assert created.code == 201
    assert await rag_answer_uses(a, fake_upstream, "4471")  # the instance that made it: at once
    await eventually(lambda: rag_answer_uses(b, fake_upstream, "4471"), what="b uses a's new document")
    assert b.services.knowledge_base.version == a.services.knowledge_base.version
    assert b.services.knowledge_base.export() == a.services.knowledge_base.export()

    # An update and a delete through b reach a the same way (the announced documents only, not a full re-read).
    admin_b = bearer(b.base_url, b.services.admin_token)
    version = b.services.knowledge_base.version
    updated = await admin_b.fetch(
        "PUT", "/admin/api/knowledge/zebra", {**document, "content": "The zebra code is now 9012.", "version": version}
    )
    assert updated.code == 200
    await eventually(lambda: rag_answer_uses(a, fake_upstream, "9012"), what="a uses b's update")
    assert (await admin_b.fetch("DELETE", "/admin/api/knowledge/zebra")).code == 204
    await eventually(lambda: "zebra" not in {d["id"] for d in a.services.knowledge_base.documents()})
    assert a.services.knowledge_base.export() == b.services.knowledge_base.export()


@pytest.mark.gen_test(timeout=60)
async def test_conflicting_edits_from_two_instances_are_refused_as_within_one(instances):
    a, b = instances
    admin_a, admin_b = bearer(a.base_url, a.services.admin_token), bearer(b.base_url, b.services.admin_token)
    read = json.loads((await admin_b.fetch("GET", "/admin/api/knowledge/connect-agora")).body)
    version = b.services.knowledge_base.version
    mine = {"title": read["title"], "content": "Edited on a.", "version": version}
    theirs = {"title": read["title"], "content": "Edited on b.", "version": version}
    assert (await admin_a.fetch("PUT", "/admin/api/knowledge/connect-agora", mine)).code == 200
    # b may not have heard of a's edit yet: Redis's version check stops b's stale save all the same.
    refused = await admin_b.fetch("PUT", "/admin/api/knowledge/connect-agora", theirs)
    assert refused.code == 409, refused.body
    assert json.loads(refused.body)["error"]["param"] == "version"
    await eventually(lambda: b.services.knowledge_base.get("connect-agora")["content"] == "Edited on a.")

    # Two instances adding one id at the same moment: one wins, the other is told it exists.
    new = {"id": "racing", "content": "One of two."}
    replies = await asyncio.gather(
        admin_a.fetch("POST", "/admin/api/knowledge", new), admin_b.fetch("POST", "/admin/api/knowledge", new)
    )
    assert sorted(reply.code for reply in replies) == [201, 409]
    await eventually(lambda: a.services.knowledge_base.export() == b.services.knowledge_base.export())


@pytest.mark.gen_test(timeout=60)
async def test_an_import_through_one_instance_replaces_the_others_knowledge(instances):
    a, b = instances
    replacement = {"documents": [{"id": "only", "title": "Only", "content": "The only document left."}]}
    admin_a = bearer(a.base_url, a.services.admin_token)
    assert (await admin_a.fetch("PUT", "/admin/api/knowledge.json", replacement)).code == 200
    await eventually(lambda: [d["id"] for d in b.services.knowledge_base.documents()] == ["only"])
    exported = json.loads(
        (await bearer(b.base_url, b.services.admin_token).fetch("GET", "/admin/api/knowledge.json")).body
    )
    assert exported["documents"] == [{**replacement["documents"][0], "tags": [], "enabled": True}]


@pytest.mark.settings(audio_pace="burst")
@pytest.mark.gen_test(timeout=60)
async def test_a_clip_uploaded_through_one_instance_plays_on_the_other(instances):
    a, b = instances
    body, content_type = multipart(
        {"transcript": "Shared reply.", "name": "shared", "activate": "true"},
        "shared.wav",
        encode(tone(0.5, 16000), 16000),
    )
    admin_a = bearer(a.base_url, a.services.admin_token)
    created = await admin_a.fetch("POST", "/admin/api/audio", raw=body, headers={"Content-Type": content_type})
    assert created.code == 201
    await eventually(lambda: b.services.audio_library.active_name() == "shared")
    ask = {"messages": [{"role": "user", "content": "Play it."}], "modalities": ["text", "audio"]}
    result = await stream(b.base_url, "/audio/chat/completions", ask)
    assert result.chunks[0]["choices"][0]["delta"]["audio"]["transcript"] == "Shared reply."
    assert b.services.audio_library.active_clip().pcm == a.services.audio_library.active_clip().pcm

    # Deleted through b: a plays the simulated reply (no clip is active), and the audio is gone from Redis too.
    assert (await bearer(b.base_url, b.services.admin_token).fetch("DELETE", "/admin/api/audio/shared")).code == 204
    await eventually(lambda: "shared" not in a.services.audio_library.names())
    assert a.services.audio_library.active_name() is None
    redis_keys = a.services.shared.state.sync.keys("llm:audio:pcm:*")
    assert len(redis_keys) == len({e["size"] for e in a.services.audio_library.list()})  # the shipped clip's


@pytest.mark.gen_test(timeout=60)
async def test_a_conversations_memory_follows_it_to_the_other_instance(instances):
    a, b = instances
    exchange = Exchange(
        "What is it like in Oslo?",
        None,
        (
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function"}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees"},
        ),
    )
    a.services.memory.remember("user:ada", exchange)
    await eventually(lambda: b.services.memory.get("user:ada") is not None, what="b holds a's memory")
    assert b.services.memory.get("user:ada") == a.services.memory.get("user:ada")
    held = a.services.shared.state.sync.ttl("llm:memory:user:ada")
    assert 0 < held <= a.services.settings.memory_seconds  # it expires with the conversation

    # A new instance reads the conversations still in Redis when it starts.
    c = start_instance(dataclasses.replace(a.services.settings), "c")
    try:
        assert c.services.memory.get("user:ada") == a.services.memory.get("user:ada")
    finally:
        await stop_instance(c)
    response = await bearer(b.base_url, b.services.admin_token).fetch("DELETE", "/admin/api/conversations/user:ada")
    assert response.code == 204
    await eventually(lambda: a.services.memory.get("user:ada") is None, what="a forgets it too")


@pytest.mark.gen_test(timeout=60)
async def test_the_live_log_on_one_instance_shows_requests_served_by_the_other(instances, fake_upstream):
    a, b = instances
    assert a.services.admin_token == b.services.admin_token  # one sign-in for the deployment
    request = HTTPRequest(
        a.base_url.replace("http://", "ws://") + "/admin/ws/logs",
        headers={"Authorization": f"Bearer {a.services.admin_token}"},
    )
    connection = await websocket_connect(request)
    try:
        await stream(b.base_url, "/chat/completions", {"messages": [{"role": "user", "content": "served by b"}]})
        while True:
            message = json.loads(await asyncio.wait_for(connection.read_message(), 10))
            record = message.get("record") or message
            if isinstance(record, dict) and record.get("last_user_message") == "served by b":
                break
        assert record["instance"] == "b"
    finally:
        connection.close()
    # a's history keeps b's request too, once: the dashboard's history is the deployment's.
    await eventually(lambda: any(r["instance"] == "b" for r in a.services.history.page(limit=10)))


@pytest.mark.gen_test(timeout=90)
async def test_redis_lost_mid_run_completions_go_on_edits_are_refused_then_everything_recovers(
    instances, fake_upstream, redis_server
):
    a, b = instances
    admin_a = bearer(a.base_url, a.services.admin_token)
    redis_server.kill()
    chat = {"messages": [{"role": "user", "content": "still there?"}]}
    for instance in (a, b):  # from each process's own copy of the state
        result = await stream(instance.base_url, "/chat/completions", chat)
        assert result.response.code == 200 and result.events[-1] == "[DONE]"
        assert await rag_answer_uses(instance, fake_upstream, "") is True
    refused = await admin_a.fetch("POST", "/admin/api/knowledge", {"id": "during", "content": "Added while down."})
    assert refused.code == 503, refused.body
    assert json.loads(refused.body)["error"]["code"] == "shared_store_unavailable"
    assert refused.headers["Retry-After"] == "5"  # clients and load balancers know when to try again
    assert "during" not in {d["id"] for d in a.services.knowledge_base.documents()}  # nothing half-done
    await eventually(lambda: not a.services.shared.available, what="a notices")
    for instance in (a, b):  # answering, so still ready: a load balancer keeps sending them traffic
        readiness = await AsyncHTTPClient().fetch(instance.base_url + "/readyz", raise_error=False)
        assert readiness.code == 200 and json.loads(readiness.body)["checks"]["redis"] is False

    redis_server.start()  # on the same port, with its data (append-only file)
    await eventually(lambda: a.services.shared.available and b.services.shared.available, timeout=30)
    assert json.loads((await AsyncHTTPClient().fetch(a.base_url + "/readyz")).body)["checks"]["redis"] is True
    created = await admin_a.fetch("POST", "/admin/api/knowledge", {"id": "after", "content": "The zebra code is 5150."})
    assert created.code == 201
    await eventually(lambda: rag_answer_uses(b, fake_upstream, "5150"), what="b uses an edit made after the outage")
    # The records of the requests served during the outage waited and were shipped: each side sees the other's.
    await eventually(
        lambda: any(
            r["instance"] == "b" and r["last_user_message"] == "still there?" for r in a.services.request_log.recent()
        )
    )
    assert a.services.dropped_records() == 0


@pytest.mark.gen_test(timeout=90)
async def test_after_a_long_outage_the_instances_are_back_at_their_next_attempt(instances, redis_server, caplog):
    """The listener's pauses have grown to their longest (5 s) when Redis comes back: the next attempt must be the
    one that reconnects. Connections pooled before the outage are dead; one used in the re-read after subscribing
    failed it and cost a whole pause more (back 5 to 10 s after Redis, not within the documented pauses)."""
    caplog.set_level(logging.DEBUG, logger="llmserver.shared")
    a, b = instances
    redis_server.kill()
    await eventually(lambda: not a.services.shared.available, what="a notices")
    await asyncio.sleep(4)  # past the pauses of 0.2, 0.5, 1 and 2 s: the next one is 5 s
    redis_server.start()
    back = time.time()
    took = await eventually(lambda: a.services.shared.available and b.services.shared.available, timeout=30)
    failed_after = [r.getMessage() for r in caplog.records if "no subscription" in r.getMessage() and r.created > back]
    assert failed_after == [], "a reconnection attempt failed after Redis was back"
    assert took <= 5 + 1, took  # the longest pause, and the attempt itself


@pytest.mark.gen_test(timeout=90)
async def test_a_redis_that_lost_its_data_is_refilled_from_the_instances(tmp_path, settings, fake_upstream):
    from fakes.redis_server import RedisServer

    forgetful = RedisServer(tmp_path / "forgetful", durable=False).start()
    base = dataclasses.replace(settings, redis_url=forgetful.url)
    a = start_instance(dataclasses.replace(base, data_dir=str(tmp_path / "a")), "a")
    b = start_instance(dataclasses.replace(base, data_dir=str(tmp_path / "b")), "b")
    try:
        admin_a = bearer(a.base_url, a.services.admin_token)
        assert (
            await admin_a.fetch("POST", "/admin/api/knowledge", {"id": "kept", "content": "Kept across."})
        ).code == 201
        await eventually(lambda: b.services.knowledge_base.version == a.services.knowledge_base.version)
        forgetful.kill()
        forgetful.start()  # empty
        await eventually(lambda: forgetful.client().exists("llm:kb:version"), timeout=30, what="refilled")
        await eventually(lambda: forgetful.client().exists("llm:audio:manifest"), timeout=30)
        documents = forgetful.client().hkeys("llm:kb:documents")
        assert b"kept" in documents
        assert (await admin_a.fetch("POST", "/admin/api/knowledge", {"id": "later", "content": "Later."})).code == 201
        await eventually(lambda: "later" in {d["id"] for d in b.services.knowledge_base.documents()})
        # The sign-in too: an instance starting now (with a data directory of its own) signs in as the others do,
        # and each data directory keeps the deployment's secrets.
        await eventually(lambda: forgetful.client().exists("llm:admin:secrets"), timeout=30, what="secrets back")
        c = build_services(dataclasses.replace(base, data_dir=str(tmp_path / "c")), instance="c")
        try:
            assert c.admin_token == a.services.admin_token == b.services.admin_token
        finally:
            await c.aclose()
        kept = json.loads((tmp_path / "b" / "secrets.json").read_text())
        assert kept["admin_token"] == a.services.admin_token
    finally:
        await stop_instance(a)
        await stop_instance(b)
        forgetful.stop()


@pytest.mark.gen_test(timeout=60)
async def test_an_edit_made_while_an_instance_starts_is_applied_once_it_listens(
    shared_settings, tmp_path, fake_upstream
):
    """The window between a process's first read of the shared state and its subscription to the announcements: an
    edit made then must not wait for the periodic re-read (RESYNC_SECONDS, 5 s), nor may requests be served before
    the process listens."""
    a = start_instance(dataclasses.replace(shared_settings, data_dir=str(tmp_path / "a")), "a")
    b_services = build_services(dataclasses.replace(shared_settings, data_dir=str(tmp_path / "b")), instance="b")
    try:
        await asyncio.wait_for(a.services.shared.state.listening.wait(), 10)
        document = {"id": "zebra", "content": "The zebra code for the back gate is 3303."}
        assert (await bearer(a.base_url, a.services.admin_token).fetch("POST", "/admin/api/knowledge", document)).code
        b_services.start_background_work()
        await asyncio.wait_for(b_services.shared.state.listening.wait(), 10)
        assert b_services.knowledge_base.version == a.services.knowledge_base.version
        assert "3303" in b_services.knowledge_base.get("zebra")["content"]
    finally:
        await stop_instance(a)
        await b_services.aclose()


def test_the_first_start_imports_knowledge_json_and_later_ones_use_redis(settings, redis_server, tmp_path, io_loop):
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    for folder, content in ((first_dir, "Imported from the first."), (second_dir, "Never imported.")):
        folder.mkdir()
        (folder / "knowledge.json").write_text(
            json.dumps({"version": 7, "documents": [{"id": "d", "content": content}]})
        )
    first = build_services(dataclasses.replace(settings, redis_url=redis_server.url, data_dir=str(first_dir)), "first")
    second = build_services(
        dataclasses.replace(settings, redis_url=redis_server.url, data_dir=str(second_dir)), "second"
    )
    try:
        assert first.knowledge_base.export() == second.knowledge_base.export()
        assert first.knowledge_base.get("d")["content"] == "Imported from the first."
        assert first.knowledge_base.version == 7  # the file's version goes on counting
        # The file stays as it was: the import/export format, no longer written while Redis holds the base.
        assert json.loads((second_dir / "knowledge.json").read_text())["documents"][0]["content"] == "Never imported."
    finally:
        io_loop.run_sync(first.aclose)
        io_loop.run_sync(second.aclose)


def test_redis_unreachable_at_start_refuses_to_start_and_says_so(settings):
    address = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    with pytest.raises(StartupError) as refused:
        build_services(dataclasses.replace(settings, redis_url=address))
    message = str(refused.value)
    assert "cannot reach Redis" in message and "REDIS_URL" in message
    assert "s3cret" not in message and ":***@127.0.0.1" in message


@pytest.mark.gen_test(timeout=60)
async def test_what_cannot_be_shipped_waits_within_its_bound_and_the_rest_is_counted_as_dropped(redis_server):
    state = SharedState(redis_server.url, "t:", "x")
    dropped: list[int] = []
    shipper = Shipper(state, lambda pipe, batch: pipe.rpush("t:list", *batch), capacity=3, on_drop=dropped.append)
    redis_server.kill()
    for n in range(10):  # all before the shipper first runs: it will take the first one, and fail
        shipper.put(str(n))
    assert shipper.dropped == 7 and dropped == [1] * 7
    task = asyncio.ensure_future(shipper.run())
    try:
        await eventually(lambda: not state.available, what="the failure is noticed")
        redis_server.start()
        await eventually(lambda: redis_server.client().llen("t:list") == 3, timeout=20)
        assert redis_server.client().lrange("t:list", 0, -1) == [b"0", b"1", b"2"]  # in order, once
    finally:
        task.cancel()
        await state.aclose()


@pytest.mark.gen_test(timeout=30)
async def test_a_re_read_that_finds_redis_gone_is_an_outage_to_wait_out_not_an_error(redis_server):
    """Redis going away between the subscription and the re-read: the listener must treat it as the outage it is
    (reconnect, re-read again), not log an error and carry on as if it had caught up."""
    state = SharedState(redis_server.url, "t:", "x")
    attempts = []

    async def resync() -> None:
        attempts.append(state.available)
        if len(attempts) == 1:
            raise state.unavailable()  # what a store's read raises when Redis is unreachable

    state.on("knowledge", lambda event: asyncio.sleep(0), resync)
    state.start()
    try:
        await asyncio.wait_for(state.listening.wait(), 10)
        assert len(attempts) == 2 and state.available  # re-read again once reconnected; no error logged
    finally:
        await state.aclose()


@pytest.mark.gen_test(timeout=30)
async def test_a_single_failed_command_does_not_leave_redis_marked_unreachable(instances):
    """An edit's or a shipper's command that failed once (a connection dropped) marks Redis unreachable; with the
    listener still subscribed, nothing else would mark it back, and /readyz and the dashboard said so for good."""
    a, _ = instances
    a.services.shared.state.unavailable()  # what a store's failed command does
    await eventually(lambda: a.services.shared.available, timeout=10, what="the next periodic re-read corrects it")


CHAT = {"messages": [{"role": "user", "content": "What time is it?"}]}


async def offers(instance, fake_upstream, tool: str) -> bool:
    """Whether a request through `instance` went upstream with the server's tool `tool`."""
    result = await stream(instance.base_url, "/chat/completions", CHAT)
    assert result.events[-1] == "[DONE]"
    sent = fake_upstream.requests[-1].body.get("tools") or []
    return tool in {entry["function"]["name"] for entry in sent}


async def switch(instance, tool: str, enabled: bool):
    return await bearer(instance.base_url, instance.services.admin_token).fetch(
        "PUT", f"/admin/api/tools/{tool}", {"enabled": enabled}
    )


@pytest.mark.settings(server_tools=("chat",))
@pytest.mark.gen_test(timeout=60)
async def test_a_tool_switched_off_through_one_instance_is_offered_by_none(instances, fake_upstream):
    a, b = instances
    assert await offers(b, fake_upstream, "current_time")
    switched = await switch(a, "current_time", False)
    assert switched.code == 200 and json.loads(switched.body)["enabled"] is False
    assert not await offers(a, fake_upstream, "current_time")
    await eventually(lambda: not_(offers(b, fake_upstream, "current_time")), what="b stops offering it")
    assert await offers(b, fake_upstream, "search_knowledge_base")  # the others stay on

    # An instance starting now reads the switch; switched on again through b, a offers it again.
    c = start_instance(dataclasses.replace(a.services.settings), "c")
    try:
        assert not await offers(c, fake_upstream, "current_time")
    finally:
        await stop_instance(c)
    assert (await switch(b, "current_time", True)).code == 200
    await eventually(lambda: offers(a, fake_upstream, "current_time"), what="a offers it again")


@pytest.mark.settings(server_tools=("chat",))
@pytest.mark.gen_test(timeout=60)
async def test_a_tool_switched_while_an_instance_is_cut_off_reaches_it_when_it_reconnects(partitioned, fake_upstream):
    a, b, proxy = partitioned
    proxy.cut()
    await eventually(lambda: not b.services.shared.available, what="b notices")
    assert (await switch(a, "current_time", False)).code == 200  # announced while b hears nothing
    refused = await switch(b, "search_knowledge_base", False)
    assert refused.code == 503 and json.loads(refused.body)["error"]["code"] == "shared_store_unavailable"
    assert await offers(b, fake_upstream, "current_time")  # b answers from its own copy meanwhile
    proxy.restore()
    await eventually(lambda: not_(offers(b, fake_upstream, "current_time")), what="b catches up")
    assert await offers(a, fake_upstream, "search_knowledge_base")  # b's refused switch changed nothing


async def not_(outcome) -> bool:
    return not await outcome


def tool_exchange(question: str, call_id: str, result: str) -> Exchange:
    return Exchange(
        question,
        None,
        (
            {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function"}]},
            {"role": "tool", "tool_call_id": call_id, "content": result},
        ),
    )


@pytest.mark.gen_test(timeout=60)
async def test_memory_made_while_an_instance_is_cut_off_reaches_it_when_it_reconnects(partitioned):
    """Announcements are heard at most once: what was announced while b was not subscribed must be read back."""
    a, b, proxy = partitioned
    first = tool_exchange("What is it like in Oslo?", "call_1", "4 degrees")
    a.services.memory.remember("user:ada", first)
    await eventually(lambda: b.services.memory.get("user:ada") is not None, what="b hears it live")

    proxy.cut()
    await eventually(lambda: not b.services.shared.available, what="b notices")
    second = tool_exchange("And in Bergen?", "call_2", "7 degrees")
    a.services.memory.remember("user:ada", second)  # a conversation b holds already
    a.services.memory.remember("user:grace", tool_exchange("Time in Tokyo?", "call_3", "09:00"))  # and a new one
    redis = a.services.shared.state.sync
    await eventually(lambda: redis.llen("llm:memory:user:ada") == 2 and redis.exists("llm:memory:user:grace"))
    assert len(b.services.memory.get("user:ada")) == 1 and b.services.memory.get("user:grace") is None

    proxy.restore()
    await eventually(lambda: b.services.memory.get("user:grace") is not None, what="b catches up")
    assert b.services.memory.get("user:ada") == a.services.memory.get("user:ada")  # each exchange once, in order
    assert b.services.memory.get("user:grace") == a.services.memory.get("user:grace")
