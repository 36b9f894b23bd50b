"""The Redis that workers and instances share state through (REDIS_URL), and its event channel.

Every change a process makes is published on one channel; every process listens and applies the others' changes.
Publish/subscribe delivers at most once, so each part also compares its version with Redis's every few seconds
and after Redis comes back, and re-reads what it missed.

Nothing on a request's path waits on Redis: requests are answered from each process's copy of the state, and what
a request leaves behind (its log record, its conversation's memory) is sent by a background task. When Redis is
unreachable, completions go on from that copy, changes are refused (503), and the listener tries again with
growing pauses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio

from ..protocol.errors import ServiceError

logger = logging.getLogger("llmserver.shared")

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]
ResyncHandler = Callable[[], Awaitable[None]]
RETRY_PAUSES = (0.2, 0.5, 1.0, 2.0, 5.0)
RESYNC_SECONDS = 5.0  # how often each part compares its version with Redis's (a missed announcement costs this)
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError)


class SharedStoreUnavailable(ServiceError):
    def __init__(self) -> None:
        super().__init__(
            "The shared store (Redis) cannot be reached, so nothing was changed; try again shortly.",
            status=503,
            code="shared_store_unavailable",
            retry_after=5,  # the listener tries to reconnect within that
        )


class SharedState:
    def __init__(self, url: str, prefix: str, instance: str) -> None:
        self.prefix = prefix
        self.instance = instance
        options = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0, "health_check_interval": 5}
        self.sync = redis.Redis.from_url(url, **options)  # for changes, made in worker threads
        self.aio = redis.asyncio.Redis.from_url(url, **options)  # for the listener and the shippers
        self.available = True
        self._handlers: dict[str, EventHandler] = {}
        self._resyncs: list[ResyncHandler] = []
        self._catch_ups: list[ResyncHandler] = []
        self._tasks: list[asyncio.Task] = []
        self.closing = False  # set by aclose: background loops end
        self.listening = asyncio.Event()  # subscribed and caught up: announcements from now on are heard

    def key(self, name: str) -> str:
        return self.prefix + name

    @property
    def channel(self) -> str:
        return self.key("events")

    def check(self) -> None:
        """Raises redis.ConnectionError with the reason when Redis cannot be reached (the server then refuses to
        start)."""
        self.sync.ping()

    def on(
        self,
        kind: str | None,
        handler: EventHandler | None,
        resync: ResyncHandler | None = None,
        *,
        catch_up: ResyncHandler | None = None,
    ) -> None:
        """`handler(event)` hears other processes' events of `kind`; `resync()` runs every few seconds and when
        Redis is back, and re-reads what the process may have missed (or puts back what Redis lost). `catch_up()`
        runs only after each subscription (at start, and when Redis is back): for state with no version to compare,
        whose announcements a process can only miss while it is not subscribed (a subscription delivers every
        message, in order, for as long as it lasts; Redis ends one that falls too far behind)."""
        if kind is not None and handler is not None:
            self._handlers[kind] = handler
        if resync is not None:
            self._resyncs.append(resync)
        if catch_up is not None:
            self._catch_ups.append(catch_up)

    def event(self, kind: str, **fields: Any) -> str:
        return json.dumps({"kind": kind, "origin": self.instance, **fields}, ensure_ascii=False)

    def stored_version(self, key: str) -> int | None:
        """A version number kept at `key` (None: the store holds nothing yet)."""
        try:
            version = self.sync.get(key)
        except REDIS_ERRORS:
            raise self.unavailable() from None
        return None if version is None else int(version)

    def unavailable(self) -> SharedStoreUnavailable:
        """Marks Redis as unreachable and returns the error to refuse a change with."""
        self.available = False
        return SharedStoreUnavailable()

    def run(self, coroutine: Awaitable[None]) -> None:
        """Keeps a background task of the shared state running until `aclose`."""
        self._tasks.append(asyncio.ensure_future(coroutine))

    def start(self) -> None:
        """Starts listening (on the running event loop)."""
        self.run(self._listen())

    async def _listen(self) -> None:
        attempt = 0
        missed = False
        while True:
            pubsub = self.aio.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                # What changed before the subscription took effect (since the start-up read, or during an outage)
                # was announced to no one here: re-read it now, not at the next periodic re-read.
                await self._resync(catching_up=True)
                if missed:
                    logger.info("shared store: Redis reachable again; state re-read")
                self.listening.set()
                self.available = True
                attempt = 0
                missed = False
                next_resync = time.monotonic() + RESYNC_SECONDS
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        await self._dispatch(message["data"])
                    if time.monotonic() >= next_resync:
                        await self._resync()
                        next_resync = time.monotonic() + RESYNC_SECONDS
                        # Subscribed and just read from Redis: reachable, whatever a shipper's or an edit's failure
                        # said meanwhile (they mark it unreachable; only this loop marks it back).
                        self.available = True
            except asyncio.CancelledError:
                raise
            except (*REDIS_ERRORS, SharedStoreUnavailable) as exc:  # the latter: a re-read that found Redis gone
                if self.closing:
                    return
                if self.available:
                    logger.warning("shared store: Redis unreachable (%s); answering from this process's state", exc)
                self.available = False
                self.listening.clear()
                missed = True
                logger.debug("shared store: no subscription (%s); trying again in %g s", exc, _pause(attempt))
                await self._forget_idle_connections()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(_pause(attempt))
            attempt += 1

    async def _forget_idle_connections(self) -> None:
        """Closes the pooled connections nobody is using. Made before the outage, they are dead (Redis restarted, or
        the network dropped them): each would fail once more after Redis is back, and the re-read that failed so
        would cost the listener another pause (up to 5 s) before it counts as reconnected. Connections in use are
        left alone (closing one could cut a command half-done); they fail, and are dropped, by themselves."""
        with contextlib.suppress(Exception):
            await self.aio.connection_pool.disconnect(inuse_connections=False)
        with contextlib.suppress(Exception):
            self.sync.connection_pool.disconnect(inuse_connections=False)

    async def _resync(self, catching_up: bool = False) -> None:
        for handler in [*self._resyncs, *(self._catch_ups if catching_up else ())]:
            try:
                await handler()
            except (*REDIS_ERRORS, SharedStoreUnavailable):
                raise  # to the listener, which tries again later
            except Exception:
                logger.exception("shared store: re-reading the shared state failed")

    async def _dispatch(self, data: bytes | str) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict) or event.get("origin") == self.instance:
            return
        handler = self._handlers.get(event.get("kind"))
        if handler is None:
            return
        try:
            await handler(event)
        except (*REDIS_ERRORS, SharedStoreUnavailable):
            raise  # the listener reconnects, then re-reads what this event said
        except Exception:
            logger.exception("shared store: applying a %s change failed", event.get("kind"))

    async def aclose(self) -> None:
        self.closing = True
        pending = set(self._tasks)
        deadline = time.monotonic() + 5
        while pending and time.monotonic() < deadline:
            # redis-py may swallow a cancellation that lands inside a command, or turn it into a connection
            # error (which `closing` then turns into an end): cancel again until each task has ended.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        await self.aio.aclose()
        self.sync.close()


def _pause(attempt: int) -> float:
    """Seconds to wait before the next attempt after `attempt` failed ones: growing, up to the longest."""
    return RETRY_PAUSES[min(attempt, len(RETRY_PAUSES) - 1)]


class Shipper:
    """Sends what requests leave behind (log records, memory) to Redis from a background task, in batches and in
    order; the caller never waits. While Redis is unreachable the items wait (up to `capacity`) and are sent when
    it is back; past that they are dropped and counted."""

    def __init__(
        self,
        state: SharedState,
        send: Callable[[Any, list[Any]], None],
        *,
        capacity: int = 10_000,
        batch: int = 500,
        linger: float = 0.0,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.state = state
        self._send = send  # adds the batch's commands to a pipeline
        self._queue: asyncio.Queue = asyncio.Queue(capacity)
        self._batch = batch
        self._linger = linger
        self._on_drop = on_drop
        self.dropped = 0

    def put(self, item: Any) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop(1)

    async def run(self) -> None:
        while not self.state.closing:
            batch = [await self._queue.get()]
            if self._linger:
                # What else finishes meanwhile goes in the same round trip: one pipeline per linger at most, however
                # many requests end, so the event loop spends little on shipping between its streams' chunks.
                await asyncio.sleep(self._linger)
            while len(batch) < self._batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            attempt = 0
            while True:
                try:
                    async with self.state.aio.pipeline(transaction=False) as pipe:
                        self._send(pipe, batch)
                        await pipe.execute()
                    break
                except REDIS_ERRORS:
                    if self.state.closing:
                        return
                    self.state.available = False
                    await asyncio.sleep(_pause(attempt))
                    attempt += 1
