"""A fake OpenAI-compatible upstream: a real HTTP server on 127.0.0.1 that speaks the real wire format.

Tests set `FakeUpstream.behaviour` to make it slow, fail with a status, cut a stream mid-way or send a bad chunk,
and read back what it received. The benchmark runs it as a separate process: `python -m fakes.upstream`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web


@dataclass
class Behaviour:
    status: int = 200  # an error status answers with OpenAI's error JSON
    error_message: str = "fake upstream failure"
    retry_after: str | None = None  # the Retry-After header of an error answer
    header_delay: float = 0.0  # before the response headers
    first_chunk_delay: float = 0.0  # after the headers, before the first chunk
    chunk_delay: float = 0.0  # between chunks
    hang: bool = False  # after the headers (or before them, with hang_before_headers), never send anything
    hang_before_headers: bool = False
    words: int = 5  # content chunks
    cut_after: int | None = None  # close the connection after this many chunks, without [DONE]
    bad_chunk_at: int | None = None  # send a non-JSON data line as this chunk
    error_event_at: int | None = None  # send an error event as this chunk
    tool_call: bool = False  # stream a tool call instead of text
    linger_after_done: float = 0.0  # keep the response open this long after [DONE]
    ignore_stream: bool = False  # answer streaming requests with one JSON completion, as some servers do
    # Close this many next connections as soon as their request arrives, answering nothing: what a client sees when
    # it sends into a kept-alive connection that the server (or a proxy) is closing at that moment.
    drop_connections: int = 0
    headers_then_close: int = 0  # this many next streams send their headers, then close without a chunk
    close_after_response: bool = False  # close every connection after its response, without saying so
    # Every `stall_every`-th chat request (the 1st, the N+1st, ...) waits `stall_seconds` before its first chunk: a
    # model's tail of multi-second stalls.
    stall_every: int = 0
    stall_seconds: float = 0.0


# Faults `--faults` injects, one per chosen request: the knobs above, for that request only.
FAULTS = (
    "status_500",
    "status_503",
    "status_429",
    "drop_connection",
    "headers_then_close",
    "cut_after",
    "bad_chunk_at",
    "error_event_at",
    "close_after_response",
    "header_delay",
)
STREAM_FAULTS = frozenset({"headers_then_close", "cut_after", "bad_chunk_at", "error_event_at"})  # streams only


def with_fault(behaviour: Behaviour, kind: str, rng: random.Random) -> Behaviour:
    """A copy of `behaviour` with one fault of `kind` (see FAULTS); the original is left as it is."""
    faulty = dataclasses.replace(behaviour)
    if kind.startswith("status_"):
        faulty.status = int(kind.removeprefix("status_"))
    elif kind == "drop_connection":
        faulty.drop_connections = 1
    elif kind == "headers_then_close":
        faulty.headers_then_close = 1
    elif kind in ("cut_after", "bad_chunk_at", "error_event_at"):
        setattr(faulty, kind, rng.randint(0, behaviour.words))  # any chunk, the first or the finish chunk included
    elif kind == "close_after_response":
        faulty.close_after_response = True
    elif kind == "header_delay":
        faulty.header_delay = rng.uniform(0.05, 0.5)
    else:
        raise ValueError(f"unknown fault {kind!r}")
    return faulty


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: Any
    opened_at: float
    closed_at: float | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)


def _chunk(completion_id: str, created: int, model: str, delta: dict, finish_reason: str | None = None) -> dict:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def _words(n: int) -> list[str]:
    return [f"word{i} " for i in range(n)]


@dataclass
class ScriptedTurn:
    """One answer the fake gives, in place of its words: some text, then tool calls (the arguments as a dict, or as
    the raw text a model might write), each streamed in fragments as OpenAI streams them."""

    text: str = ""
    calls: list[tuple[str, Any]] = field(default_factory=list)
    raw_deltas: list[dict] | None = None  # streamed as they are instead (what a broken upstream might send)
    raw_message: dict | None = None  # the non-streamed message, likewise

    def deltas(self, turn_number: int) -> list[dict]:
        if self.raw_deltas is not None:
            return [dict(delta) for delta in self.raw_deltas]
        # As models stream text: tokens with their leading space, nothing after the last ("Let", " me", " check.").
        words = self.text.split()
        deltas: list[dict] = [{"content": (" " if n else "") + word} for n, word in enumerate(words)]
        for index, (name, arguments) in enumerate(self.calls):
            text = arguments if isinstance(arguments, str) else json.dumps(arguments)
            head = {"index": index, "id": f"call_t{turn_number}_{index}", "type": "function"}
            deltas.append({"tool_calls": [{**head, "function": {"name": name, "arguments": ""}}]})
            third = max(1, len(text) // 3)
            for start in range(0, len(text), third):
                deltas.append(
                    {"tool_calls": [{"index": index, "function": {"arguments": text[start : start + third]}}]}
                )
        return deltas or [{"content": ""}]

    def message(self, turn_number: int) -> dict:
        if self.raw_message is not None:
            return dict(self.raw_message)
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None, "refusal": None}
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": f"call_t{turn_number}_{index}",
                    "type": "function",
                    "function": {
                        "name": name,
                        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                    },
                }
                for index, (name, arguments) in enumerate(self.calls)
            ]
        return message


# The request fields OpenAI's Chat Completions accepts; in strict mode anything else is refused, as OpenAI does.
OPENAI_FIELDS = frozenset(
    """audio frequency_penalty function_call functions logit_bias logprobs max_completion_tokens max_tokens messages
    metadata modalities model n parallel_tool_calls prediction presence_penalty prompt_cache_key reasoning_effort
    response_format safety_identifier seed service_tier stop store stream stream_options temperature tool_choice
    tools top_logprobs top_p user verbosity web_search_options""".split()
)


def openai_refusal(body: dict[str, Any]) -> str | None:
    """What OpenAI answers 400 to in a request (the checks its API makes on a conversation), or None."""
    for name in body:
        if name not in OPENAI_FIELDS:
            return f"Unrecognized request argument supplied: {name}"
    messages = body.get("messages") or []
    for index, message in enumerate(messages):
        role = message.get("role")
        if role == "assistant":
            if message.get("tool_calls") == []:
                return f"Invalid 'messages[{index}].tool_calls': empty array. Expected an array with minimum length 1."
            calls = message.get("tool_calls") or []
            content = message.get("content")
            if not calls and not message.get("audio") and not (content if isinstance(content, (str, list)) else None):
                return f"Invalid value for 'content': expected a string, got null. ('messages.[{index}].content')"
            answered = set()
            for following in messages[index + 1 :]:
                if following.get("role") != "tool":
                    break
                answered.add(following.get("tool_call_id"))
            if any(call.get("id") not in answered for call in calls):
                return (
                    "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                    "'tool_call_id'. The following tool_call_ids did not have response messages: "
                    + ", ".join(call.get("id") for call in calls if call.get("id") not in answered)
                )
        if role == "tool":
            earlier = messages[:index]
            called = {
                call.get("id")
                for previous in earlier
                if previous.get("role") == "assistant"
                for call in previous.get("tool_calls") or []
            }
            preceded = earlier and earlier[-1].get("role") in ("assistant", "tool")
            if message.get("tool_call_id") not in called or not preceded:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
                    "'tool_calls'."
                )
    return None


def _shared_prefix(one: str, other: str) -> int:
    """The length of the text the two start with (a binary search over their prefixes)."""
    low, high = 0, min(len(one), len(other))
    while low < high:
        middle = (low + high + 1) // 2
        if one[:middle] == other[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _tool_call_deltas() -> list[dict]:
    arguments = ['{"city"', ': "Par', 'is"}']
    first = {"index": 0, "id": "call_fake1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    return [{"tool_calls": [first]}] + [{"tool_calls": [{"index": 0, "function": {"arguments": a}}]} for a in arguments]


class _FakeHandler(tornado.web.RequestHandler):
    def initialize(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.received: ReceivedRequest | None = None
        self.request_behaviour: Behaviour | None = None  # this request's own, when a fault was injected into it

    def check_xsrf_cookie(self) -> None:
        return None

    def on_connection_close(self) -> None:
        if self.received is not None and self.received.closed_at is None:
            self.received.closed_at = time.perf_counter()
            self.received.closed.set()

    def on_finish(self) -> None:
        self.on_connection_close()
        if (self.request_behaviour or self.fake.behaviour).close_after_response:
            # As a server with a short keep-alive does: the connection goes, and the client learns it only when
            # it next tries to use it.
            asyncio.get_running_loop().call_soon(self.request.connection.stream.close)

    async def _pause(self, seconds: float | None) -> bool:
        """Waits `seconds` (None: for ever); False when the client left meanwhile: a real server stops generating
        then, and a handler still asleep when the test ends would be cancelled mid-response."""
        if self.received is None:
            await asyncio.sleep(seconds or 0)
            return True
        try:
            await asyncio.wait_for(self.received.closed.wait(), seconds)
        except TimeoutError:
            return True
        return False

    async def _before_headers(self, behaviour: Behaviour) -> bool:
        if behaviour.hang_before_headers:
            return await self._pause(None)
        if behaviour.header_delay:
            return await self._pause(behaviour.header_delay)
        return True

    def _error(self, behaviour: Behaviour) -> None:
        self.set_status(behaviour.status)
        self.set_header("Content-Type", "application/json")
        if behaviour.retry_after is not None:
            self.set_header("Retry-After", behaviour.retry_after)
        error = {"message": behaviour.error_message, "type": "fake_error", "param": None, "code": "fake"}
        self.finish(json.dumps({"error": error}))


class ChatHandler(_FakeHandler):
    async def post(self) -> None:
        fake = self.fake
        body = json.loads(self.request.body)
        behaviour = self.request_behaviour = fake.behaviour_for(body)
        self.received = ReceivedRequest(self.request.path, dict(self.request.headers), body, time.perf_counter())
        fake.requests.append(self.received)
        fake.chat_requests += 1
        number = fake.chat_requests
        if behaviour.drop_connections:
            behaviour.drop_connections -= 1
            self.request.connection.stream.close()
            return
        if not await self._before_headers(behaviour):
            return
        if behaviour.status != 200:
            return self._error(behaviour)
        refusal = openai_refusal(body) if fake.strict else None
        if refusal is not None:
            fake.refusals.append(refusal)
            return self._error(Behaviour(status=400, error_message=refusal))
        model = body.get("model", "fake-model")
        cached = fake.cached_tokens(body.get("messages"))
        completion_id = f"chatcmpl-fake{len(fake.requests)}"
        created = int(time.time())
        scripted = fake.script.pop(0) if fake.script else None
        answered = bool(body.get("messages")) and body["messages"][-1].get("role") == "tool"
        if scripted is None and fake.call_tool and not answered:  # every first pass calls it: a two-pass answer
            scripted = ScriptedTurn("", [(fake.call_tool, {"timezone": "UTC"})])
        if not body.get("stream") or behaviour.ignore_stream:
            text = "".join(_words(behaviour.words))
            message = {"role": "assistant", "content": text, "refusal": None}
            if scripted is not None:
                message = scripted.message(len(fake.requests))
            usage = {"prompt_tokens": 3, "completion_tokens": behaviour.words, "total_tokens": 3 + behaviour.words}
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
            finish = "tool_calls" if message.get("tool_calls") else "stop"
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            self.set_header("Content-Type", "application/json")
            self.finish(
                json.dumps(
                    {
                        "id": completion_id,
                        "object": "chat.completion",
                        "created": created,
                        "model": model,
                        "choices": [choice],
                        "usage": usage,
                    }
                )
            )
            return
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        await self.flush()
        if behaviour.headers_then_close:
            behaviour.headers_then_close -= 1
            self.request.connection.stream.close()
            return
        if behaviour.hang and not await self._pause(None):
            return
        if behaviour.first_chunk_delay and not await self._pause(behaviour.first_chunk_delay):
            return
        stalls = behaviour.stall_every and (number - 1) % behaviour.stall_every == 0
        if stalls and not await self._pause(behaviour.stall_seconds):
            return
        if scripted is not None:
            deltas = scripted.deltas(len(fake.requests))
        elif behaviour.tool_call:
            deltas = _tool_call_deltas()
        elif fake.reply is not None:
            deltas = [{"content": fake.reply[i : i + 3]} for i in range(0, len(fake.reply), 3)]
        else:
            deltas = [{"content": w} for w in _words(behaviour.words)]
        deltas[0] = {"role": "assistant", **deltas[0]}
        events = [json.dumps(_chunk(completion_id, created, model, d)) for d in deltas]
        calls = (scripted.calls or scripted.raw_deltas) if scripted is not None else behaviour.tool_call
        finish = "tool_calls" if calls else "stop"
        events.append(json.dumps(_chunk(completion_id, created, model, {}, finish)))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 3, "completion_tokens": len(deltas), "total_tokens": 3 + len(deltas)}
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
            usage_chunk = _chunk(completion_id, created, model, {})
            usage_chunk["choices"] = []
            usage_chunk["usage"] = usage
            events.append(json.dumps(usage_chunk))
        try:
            for index, event in enumerate(events):
                if behaviour.cut_after is not None and index == behaviour.cut_after:
                    self.request.connection.stream.close()
                    return
                if behaviour.bad_chunk_at == index:
                    event = "this is not json"
                if behaviour.error_event_at == index:
                    event = json.dumps({"error": {"message": "fake mid-stream failure", "type": "server_error"}})
                if behaviour.chunk_delay and index:
                    await asyncio.sleep(behaviour.chunk_delay)  # short: a closed connection shows at the next write
                self.write(f"data: {event}\n\n")
                await self.flush()
            self.write("data: [DONE]\n\n")
            await self.flush()
            if behaviour.linger_after_done:
                await self._pause(behaviour.linger_after_done)
        except tornado.iostream.StreamClosedError:
            pass


class ModelsHandler(_FakeHandler):
    async def get(self) -> None:
        behaviour = self.fake.behaviour
        self.received = ReceivedRequest(self.request.path, dict(self.request.headers), None, time.perf_counter())
        self.fake.requests.append(self.received)
        if behaviour.status != 200:
            return self._error(behaviour)
        model = {"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}
        self.finish({"object": "list", "data": [model]})


class FakeUpstream:
    """The fake upstream server; `base_url` is what OPENAI_BASE_URL should be set to."""

    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.requests: list[ReceivedRequest] = []
        self.chat_requests = 0  # counted even where `requests` keeps nothing (the benchmark's)
        # Strict: refuse with 400, as OpenAI does, unknown top-level fields, tool calls without results, results
        # without calls and empty assistant turns (what it refused is kept in `refusals`).
        self.strict = False
        self.refusals: list[str] = []
        self._prompts: collections.deque[str] = collections.deque(maxlen=16)  # for the prompt cache
        self.script: list[ScriptedTurn] = []  # the next answers, one per chat request, before the words
        self.call_tool: str | None = None  # a tool every request calls before the words (the benchmark's two passes)
        self.reply: str | None = None  # streamed in three-character pieces instead of the words (the benchmark's)
        app = tornado.web.Application(
            [
                (r"/v1/chat/completions", ChatHandler, {"fake": self}),
                (r"/v1/models", ModelsHandler, {"fake": self}),
            ]
        )
        self._server = tornado.httpserver.HTTPServer(app)
        self.port = 0
        # With `faults` above 0, each chat request gets, with that probability, one fault of FAULTS (chosen with
        # `fault_random`) for itself alone; `on_chat_request` hears of each request (its body) and its fault.
        self.faults = 0.0
        self.fault_random = random.Random(0)
        self.on_chat_request: Callable[[dict[str, Any], str | None], None] | None = None

    def cached_tokens(self, messages: Any) -> int:
        """As OpenAI's prompt cache counts them: the longest prefix this prompt shares with a recent one, if it is
        1,024 tokens or more, in steps of 128 (a token taken as four characters of the messages' JSON)."""
        prompt = json.dumps(messages, ensure_ascii=False)
        shared = max((_shared_prefix(prompt, earlier) for earlier in self._prompts), default=0) // 4
        self._prompts.append(prompt)
        return 0 if shared < 1024 else shared - shared % 128

    def behaviour_for(self, body: dict[str, Any]) -> Behaviour:
        """The behaviour of one chat request: the shared one, or (see `faults`) a copy of it with a fault."""
        behaviour, fault = self.behaviour, None
        if self.faults and self.fault_random.random() < self.faults:
            stream = bool(body.get("stream")) and not behaviour.ignore_stream
            fault = self.fault_random.choice([kind for kind in FAULTS if stream or kind not in STREAM_FAULTS])
            behaviour = with_fault(behaviour, fault, self.fault_random)
        if self.on_chat_request is not None:
            self.on_chat_request(body, fault)
        return behaviour

    def start(self, sock: socket.socket | None = None) -> FakeUpstream:
        sockets = [sock] if sock else tornado.netutil.bind_sockets(0, "127.0.0.1")
        self._server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def last(self) -> ReceivedRequest:
        return self.requests[-1]

    async def stop(self) -> None:
        self._server.stop()
        await self._server.close_all_connections()


async def _main() -> None:
    parser = argparse.ArgumentParser(
        description="Run the fake OpenAI-compatible upstream; it prints its port first (--port 0: the OS picks one)."
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--words", type=int, default=20)
    parser.add_argument("--first-chunk-delay", type=float, default=0.0, help="seconds, like a model thinking")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument(
        "--faults",
        type=float,
        default=0.0,
        help="probability (0..1) that a chat request gets one random fault (a 500/503/429, a dropped or cut "
        "connection, a bad chunk, an error event, a short delay); each request is then printed as a JSON line "
        '{"fault": <kind or null>, "user": <its "user" field>}',
    )
    parser.add_argument("--fault-seed", type=int, default=0, help="seeds the choice of faults")
    parser.add_argument("--call-tool", help="a tool each request calls first (answers follow its result)")
    parser.add_argument("--stall-every", type=int, default=0, help="every Nth chat request stalls first")
    parser.add_argument("--reply", help="a text to stream, in three-character pieces, instead of the words")
    parser.add_argument("--stall-seconds", type=float, default=0.0, help="how long such a request stalls")
    args = parser.parse_args()
    if not 0.0 <= args.faults <= 1.0:
        parser.error("--faults must be between 0 and 1")
    fake = FakeUpstream()
    fake.faults = args.faults
    fake.fault_random = random.Random(args.fault_seed)
    if args.faults:
        fake.on_chat_request = lambda body, fault: print(
            json.dumps({"fault": fault, "user": body.get("user")}), flush=True
        )
    fake.behaviour.words = args.words
    fake.behaviour.first_chunk_delay = args.first_chunk_delay
    fake.behaviour.chunk_delay = args.chunk_delay
    fake.call_tool = args.call_tool
    fake.reply = args.reply
    fake.behaviour.stall_every = args.stall_every
    fake.behaviour.stall_seconds = args.stall_seconds
    if args.port:
        fake.start(tornado.netutil.bind_sockets(args.port, "127.0.0.1")[0])
    else:
        fake.start()
    fake.requests = _Discard()
    print(fake.port, flush=True)
    await asyncio.Event().wait()


class _Discard(list):
    """A benchmark run keeps no request history."""

    def append(self, item: Any) -> None:
        return None

    def __len__(self) -> int:
        return 0


if __name__ == "__main__":
    asyncio.run(_main())
