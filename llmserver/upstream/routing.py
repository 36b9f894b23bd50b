"""Several upstreams: which one answers a request, and what happens when it is slow or fails.

Until the upstream's first chunk, nothing of its answer has reached the caller (the RAG endpoint's waiting message is
the server's own), so the server is free to try again elsewhere:

- **Fallback**: a connection error, a timeout, a 408/409/429/5xx or an upstream's own first-token deadline moves the
  request to the next upstream, at once. When every upstream has been tried, the first is tried again after a
  back-off, within UPSTREAM_RETRIES. A connection that closed before answering (a kept-alive one the peer had
  closed) is tried again on the same upstream at once. Other answers (400, 401, 404, ...) are the caller's to see.
- **Hedging** (HEDGE_AFTER_MS): when the upstream has sent no first chunk after the delay, the same request starts
  on the next upstream too; the first first chunk wins and the other attempt is cancelled at once. `auto` learns the
  delay per upstream from its recent times to first chunk (their p90), and a budget bounds the extra requests.
- **Health**: an upstream that fails UPSTREAM_SKIP_AFTER times in a row is skipped for UPSTREAM_SKIP_SECONDS (doubling
  while it keeps failing, up to 2 minutes); then one request probes it (half-open), and its answer decides.

After the first chunk the answer belongs to that upstream: a failure then is the caller's error event, as always.
What happens is reported to the request's trace (which upstream answered, every attempt) and to an observer (the
metrics), and `status()` is what the dashboard shows.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..protocol.errors import ApiError
from .protocol import Upstream, UpstreamChunk, UpstreamError
from .trace import RelayTrace
from .upstreams_file import UpstreamConfig

DROPPED_CONNECTION_RETRIES = 3  # immediate: a pool can hold several connections the peer has closed
MAX_BACKOFF = 8.0
MAX_SKIP_SECONDS = 120.0
TIMES_KEPT = 200  # recent times to first chunk, per upstream, for the auto hedging delay
TIMES_NEEDED = 20  # before that many, `auto` hedges after AUTO_FIRST_DELAY
AUTO_FIRST_DELAY = 1.0
AUTO_QUANTILE = 0.9
HEDGE_BURST = 10.0  # hedges the budget may save up for a burst of slow answers


def backoff(attempt: int, retry_after: float | None) -> float:
    """Seconds before retry number `attempt` (from 1): the upstream's wish, else exponential with jitter."""
    if retry_after is not None:
        return min(retry_after, MAX_BACKOFF * 4)
    return min(MAX_BACKOFF, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.75, 1.0)


class RoutingObserver(Protocol):
    """Hears what happens to each upstream (the metrics)."""

    def attempt_started(self, upstream: str, hedge: bool) -> None: ...

    def first_chunk(self, upstream: str, seconds: float, hedge: bool) -> None: ...

    def attempt_failed(self, upstream: str, code: str, status: int) -> None: ...

    def attempt_cancelled(self, upstream: str) -> None: ...

    def hedge_won(self, upstream: str) -> None: ...

    def state_changed(self, upstream: str, state: str) -> None: ...


class SilentObserver:
    """An observer that hears nothing (a router without metrics: tests, tools)."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args: None


@dataclass(frozen=True)
class HealthPolicy:
    failures_to_skip: int = 3
    skip_seconds: float = 10.0


class Health:
    """An upstream's health: healthy; skipped (for a while, after failures in a row); probing (one request sent to
    see whether it is back)."""

    def __init__(self, policy: HealthPolicy, on_change: Callable[[str], None]) -> None:
        self.policy = policy
        self.state = "healthy"
        self.failures = 0  # in a row
        self.skips = 0  # skips in a row: each lasts twice the one before
        self.skipped_until = 0.0
        self._on_change = on_change

    def _become(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._on_change(state)

    def usable(self, now: float) -> bool:
        """Whether a request may go there now: healthy, or skipped long enough that a probe is due."""
        return self.state == "healthy" or (self.state == "skipped" and now >= self.skipped_until)

    def began(self, now: float) -> None:
        if self.state == "skipped" and now >= self.skipped_until:
            self._become("probing")  # this request is the probe; others skip it until it has answered

    def succeeded(self) -> None:
        self.failures = self.skips = 0
        self._become("healthy")

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.state == "probing":
            self.skips += 1  # a failed probe: skipped again, twice as long
        elif self.state == "healthy" and self.failures >= self.policy.failures_to_skip:
            self.skips = 1
        else:
            return  # already skipped: the failures of requests sent before change nothing
        self.skipped_until = now + min(MAX_SKIP_SECONDS, self.policy.skip_seconds * 2 ** (self.skips - 1))
        self._become("skipped")

    def abandoned(self) -> None:
        """The probe was cancelled before it told anything: the next request probes again."""
        if self.state == "probing":
            self._become("skipped")


class FirstChunkTimes:
    """An upstream's recent times to first chunk, and their quantiles (sorted again every few samples)."""

    def __init__(self, size: int = TIMES_KEPT) -> None:
        self._times: deque[float] = deque(maxlen=size)
        self._sorted: list[float] = []
        self._unsorted = 0

    def add(self, seconds: float) -> None:
        self._times.append(seconds)
        self._unsorted += 1

    def quantile(self, q: float) -> float | None:
        if len(self._times) < TIMES_NEEDED:
            return None
        if self._unsorted >= 10 or not self._sorted:
            self._sorted = sorted(self._times)
            self._unsorted = 0
        return self._sorted[min(len(self._sorted) - 1, math.ceil(q * len(self._sorted)) - 1)]


@dataclass(frozen=True)
class HedgePolicy:
    """`after`: None (off), seconds, or "auto"; `budget`: the most extra requests hedging may add, as a share."""

    after: float | str | None = None
    budget: float = 0.1

    @property
    def enabled(self) -> bool:
        return self.after is not None


class HedgeBudget:
    """A token bucket: every request earns `share` of a hedge, a hedge spends one; at most HEDGE_BURST saved, and
    full at start (the first slow answers are hedged at once)."""

    def __init__(self, share: float) -> None:
        self.share = share
        self.tokens = HEDGE_BURST if share > 0 else 0.0

    def earn(self) -> None:
        self.tokens = min(HEDGE_BURST, self.tokens + self.share)

    def spend(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Route:
    """One upstream as the router uses it: its client, settings, health, recent times and streams in flight."""

    def __init__(self, config: UpstreamConfig, client: Upstream, health: HealthPolicy, observer: RoutingObserver):
        self.config = config
        self.name = config.name
        self.client = client
        self.first_token_timeout = config.first_token_timeout  # the router sets a default with several upstreams
        self.times = FirstChunkTimes()
        self.in_flight = 0
        self.health = Health(health, lambda state: observer.state_changed(self.name, state))
        self.hedges = self.hedges_won = 0

    def has_room(self) -> bool:
        return self.config.max_streams is None or self.in_flight < self.config.max_streams

    def can_call(self, api_key: str | None) -> bool:
        """It has a key of its own (or needs none: the offline responder, a local server), or the caller sent one."""
        return self.client.has_own_key or bool(api_key) or not self.config.needs_key

    def body_for(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model")
        if not self.config.models or not isinstance(model, str):
            return body
        mapped = self.config.model_for(model)
        return body if mapped == model else {**body, "model": mapped}

    def hedge_delay(self, policy: HedgePolicy) -> float:
        if policy.after != "auto":
            return float(policy.after)  # type: ignore[arg-type]
        learned = self.times.quantile(AUTO_QUANTILE)
        return AUTO_FIRST_DELAY if learned is None else learned

    def status(self, now: float, policy: HedgePolicy) -> dict[str, Any]:
        p50 = self.times.quantile(0.5)
        return {
            "name": self.name,
            "base_url": self.client.base_url,
            "state": self.health.state,
            "failures_in_a_row": self.health.failures,
            "skipped_for_seconds": round(max(0.0, self.health.skipped_until - now), 1)
            if self.health.state == "skipped"
            else 0.0,
            "in_flight": self.in_flight,
            "max_streams": self.config.max_streams,
            "first_chunk_p50_ms": None if p50 is None else round(p50 * 1000, 1),
            "hedge_after_ms": round(self.hedge_delay(policy) * 1000, 1) if policy.enabled else None,
            "hedges": self.hedges,
            "hedges_won": self.hedges_won,
        }


@dataclass
class Opened:
    """A stream whose first chunk has arrived: the rest of its chunks, and the upstream they come from. The relay
    closes it (and reports a failure after the first chunk with `broke`)."""

    route: Route
    chunks: AsyncIterator[UpstreamChunk]
    first: UpstreamChunk | None
    hedged: bool = False
    losers: asyncio.Task | None = None  # the other attempts of a hedged race, being cancelled
    _closed: bool = field(default=False, repr=False)

    def broke(self, error: UpstreamError) -> None:
        if error.retryable or error.status >= 500:
            self.route.health.failed(asyncio.get_running_loop().time())

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                await self.chunks.aclose()
            finally:
                self.route.in_flight -= 1
                if self.losers is not None:
                    await asyncio.wait({self.losers})


class UpstreamsBusy(ApiError):
    def __init__(self) -> None:
        super().__init__(
            503,
            "Every upstream is answering its limit of streams; retry in a moment.",
            code="upstreams_busy",
            headers={"Retry-After": "1"},
        )


OPERATOR_STATUSES = (401, 403, 404)  # with several upstreams: that upstream's key or model, not the request


class Router:
    def __init__(
        self,
        routes: Sequence[Route],
        *,
        retries: int = 2,
        hedge: HedgePolicy | None = None,
        observer: RoutingObserver | None = None,
        first_token_timeout: float | None = None,
    ) -> None:
        """`first_token_timeout`: the whole request's (FIRST_TOKEN_TIMEOUT); with several upstreams, one without a
        deadline of its own gets an equal share of it, so that a hung upstream passes the request on in time."""
        self.routes = list(routes)
        self.retries = retries
        self.first_token_timeout = first_token_timeout
        if first_token_timeout and len(self.routes) > 1:
            for route in self.routes:
                route.first_token_timeout = route.first_token_timeout or first_token_timeout / len(self.routes)
        self.hedge = hedge or HedgePolicy()
        self.observer = observer or SilentObserver()
        self.budget = HedgeBudget(self.hedge.budget)
        offline = all(route.client.mode == "offline" for route in self.routes)
        self.mode = "offline" if offline else "openai"
        self.base_url = self.routes[0].client.base_url if len(self.routes) == 1 else None
        self.names = ", ".join(route.name for route in self.routes)
        self._closing: set[asyncio.Task] = set()  # losers of hedged races, closing their connections

    @classmethod
    def single(cls, client: Upstream, *, retries: int = 2, name: str = "default") -> Router:
        """One upstream (OPENAI_BASE_URL/OPENAI_API_KEY, or the offline responder)."""
        config = UpstreamConfig(name, client.base_url, needs_key=True)
        return cls([Route(config, client, HealthPolicy(), SilentObserver())], retries=retries)

    @property
    def has_own_key(self) -> bool:
        """Some upstream can be called without the caller's key."""
        return any(route.can_call(None) for route in self.routes)

    def plan(self, api_key: str | None) -> list[Route]:
        """The upstreams to try, in order: the usable ones with room; when none is usable (all skipped), the ones
        with room, soonest due first, rather than no answer at all."""
        callable_routes = [route for route in self.routes if route.can_call(api_key)]
        with_room = [route for route in callable_routes if route.has_room()]
        if callable_routes and not with_room:
            raise UpstreamsBusy()
        now = asyncio.get_running_loop().time()
        usable = [route for route in with_room if route.health.usable(now)]
        return usable or sorted(with_room, key=lambda route: route.health.skipped_until)

    async def open_stream(
        self, body: dict[str, Any], api_key: str | None, trace: RelayTrace, deadline_at: float | None = None
    ) -> Opened:
        """A stream and its first chunk, from the first upstream that gives one (see the module's notes);
        `deadline_at` (the event loop's clock) is when the caller's own deadline ends the request."""
        self.budget.earn()
        race = _Race(self, body, api_key, trace, deadline_at=deadline_at)
        try:
            opened = await race.run()
        except BaseException:
            await race.cancel_the_rest()  # the caller left, or no upstream answered: all closed before it ends
            raise
        if race.racing:
            # The losers are cancelled now and close their connections meanwhile: the winner's first chunk does not
            # wait for them (the answer's end does, so that its record has every attempt).
            opened.losers = asyncio.ensure_future(race.cancel_the_rest())
            self._closing.add(opened.losers)
            opened.losers.add_done_callback(self._closing.discard)
        return opened

    async def complete(self, body: dict[str, Any], api_key: str | None, trace: RelayTrace) -> dict[str, Any]:
        """A `stream: false` completion, with fallback (no hedging: a whole completion has no first token)."""
        _, completion = await _Race(self, body, api_key, trace, streamed=False).run_sequentially()
        return completion

    async def list_models(self, api_key: str | None) -> dict[str, Any]:
        """The first upstream's model list that can be had, with fallback."""
        _, models = await _Race(self, {}, api_key, None, streamed=False, call="models").run_sequentially()
        return models

    def status(self) -> dict[str, Any]:
        now = asyncio.get_running_loop().time()
        after = self.hedge.after
        return {
            "hedging": "off" if after is None else ("auto" if after == "auto" else round(float(after) * 1000, 1)),
            "hedge_budget": self.hedge.budget,
            "upstreams": [route.status(now, self.hedge) for route in self.routes],
        }

    async def aclose(self) -> None:
        while self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        for route in self.routes:
            await route.client.aclose()


class _Race:
    """One request's way to an answer: the attempts made, in order, and (hedging) at most two at once.

    A failed attempt is judged (`failed`): whether it says the upstream is unwell (health), and whether the request
    may go elsewhere. What may not (the request itself was refused) ends the race once no other attempt is still
    running; the caller then gets that answer.
    """

    def __init__(
        self,
        router: Router,
        body: dict[str, Any],
        api_key: str | None,
        trace: RelayTrace | None,
        *,
        streamed: bool = True,
        call: str = "chat",
        deadline_at: float | None = None,
    ) -> None:
        self.router = router
        self.body = body
        self.api_key = api_key
        self.trace = trace
        self.streamed = streamed
        self.call = call
        self.loop = asyncio.get_running_loop()
        self.pending: deque[Route] = deque(router.plan(api_key))
        if not self.pending:
            raise ApiError(
                401,
                "No API key: send 'Authorization: Bearer <key>' or give the upstreams keys of their own.",
                code="missing_api_key",
            )
        self.deadline_at = deadline_at
        self.retries_used = 0
        self.dropped_retries = DROPPED_CONNECTION_RETRIES
        self.errors: dict[str, UpstreamError] = {}  # each upstream's last failure
        self.last_error: UpstreamError | None = None
        self.final_error: UpstreamError | None = None  # a refusal: the caller's answer once nothing else runs
        self.racing: dict[asyncio.Task, tuple[Route, float]] = {}
        self.spare: list[Opened] = []  # a second winner in the same moment: closed unread
        self.hedged = False
        self.hedges_left = 1 if router.hedge.enabled else 0  # one hedge per request, if the budget allows it

    # Choosing the next upstream ----------------------------------------------------------------------------------

    async def next_route(self) -> Route:
        """The next upstream to ask: one not asked yet (with room), else, after a back-off, the first again."""
        route = self.next_with_room()
        if route is not None:
            return route
        error = self.final_error or self.last_error
        if error is None:
            raise UpstreamsBusy()
        if self.final_error is not None or self.retries_used >= self.router.retries:
            raise error
        plan = [route for route in self.router.plan(self.api_key) if route.has_room()]  # health may have changed
        first = self.errors.get(plan[0].name) if plan else None
        delay = backoff(self.retries_used + 1, first.retry_after if first is not None else None)
        if not plan or (self.deadline_at is not None and self.loop.time() + delay >= self.deadline_at):
            raise error  # no time left to wait for: the failure now, rather than a timeout later
        self.retries_used += 1
        await asyncio.sleep(delay)
        self.pending.extend(plan)
        return self.pending.popleft()

    def failed(self, route: Route, error: UpstreamError, started: float) -> None:
        """Reports a failed attempt, and decides what may follow it (see the class's notes)."""
        retry_here = error.dropped and self.dropped_retries > 0  # a kept-alive connection the peer had closed
        server_side = error.retryable or error.status >= 500  # nothing of it reached the caller: safe to move on
        several = len(self.router.routes) > 1
        operator = several and error.status in OPERATOR_STATUSES  # that upstream's key or model mapping
        if retry_here:
            self.dropped_retries -= 1
            self.pending.appendleft(route)
        elif server_side or (operator and error.status != 404 and route.client.has_own_key):
            route.health.failed(self.loop.time())
        elif not error.dropped:
            route.health.succeeded()  # it answered: the request was refused, the upstream is well
        self.router.observer.attempt_failed(route.name, error.code or "error", error.status)
        if self.trace is not None:
            self.trace.attempt_ended(route.name, "failed", (self.loop.time() - started) * 1000, error.code)
        self.errors[route.name] = error
        if server_side or operator:
            self.last_error = error
        else:
            self.final_error = self.final_error or error

    def ended(self) -> bool:
        """The race is over (a refusal, and no other attempt still running)."""
        return self.final_error is not None and not self.racing

    # One attempt ---------------------------------------------------------------------------------------------------

    async def attempt(self, route: Route, hedge: bool = False) -> Any:
        """One call to `route`: a stream's first chunk (within the upstream's own deadline), a completion, or the
        model list. Its failures are UpstreamErrors; a cancelled attempt closes its connection before it ends."""
        if self.trace is not None:
            self.trace.attempted(route.name)
        self.router.observer.attempt_started(route.name, hedge)
        started = self.loop.time()
        route.health.began(started)
        route.in_flight += 1
        body = route.body_for(self.body)
        if not self.streamed:
            try:
                if self.call == "models":
                    answer = await route.client.list_models(self.api_key)
                else:
                    answer = await route.client.complete(body, self.api_key)
            except asyncio.CancelledError:
                route.health.abandoned()
                raise
            finally:
                route.in_flight -= 1
            route.health.succeeded()
            return route, answer
        chunks = route.client.stream(body, self.api_key)
        deadline = route.first_token_timeout
        try:
            try:
                async with asyncio.timeout(deadline):
                    first = await anext(chunks)
            except StopAsyncIteration:
                first = None
            except TimeoutError:
                raise UpstreamError(
                    504,
                    f"The upstream {route.name!r} sent no first chunk within {deadline:g} s.",
                    code="first_token_deadline",
                    retryable=True,
                ) from None
        except BaseException as exc:
            await chunks.aclose()
            route.in_flight -= 1
            if isinstance(exc, asyncio.CancelledError):
                self.cancelled(route, started)
            raise
        seconds = self.loop.time() - started
        route.times.add(seconds)
        route.health.succeeded()
        self.router.observer.first_chunk(route.name, seconds, hedge)
        return Opened(route, chunks, first, hedge)

    def cancelled(self, route: Route, started: float) -> None:
        """An attempt cancelled before its first chunk: the loser of a race, one the caller left, or one the
        request's FIRST_TOKEN_TIMEOUT ended (which counts against the upstream's health, as its own deadline does).
        Its time so far is a lower bound of its time to first chunk, which keeps the learned delay honest about slow
        answers it never saw."""
        now = self.loop.time()
        elapsed = now - started
        if self.hedged:
            route.times.add(elapsed)
        if self.deadline_at is not None and now >= self.deadline_at:
            route.health.failed(now)
            self.router.observer.attempt_failed(route.name, "first_token_timeout", 504)
            if self.trace is not None:
                self.trace.attempt_ended(route.name, "failed", elapsed * 1000, "first_token_timeout")
            return
        route.health.abandoned()
        self.router.observer.attempt_cancelled(route.name)
        if self.trace is not None:
            self.trace.attempt_ended(route.name, "cancelled", elapsed * 1000, None)

    def won(self, result: Any, started: float) -> Any:
        route = result[0] if isinstance(result, tuple) else result.route
        if self.trace is not None:
            self.trace.attempt_ended(route.name, "won", (self.loop.time() - started) * 1000, None)
            self.trace.upstream_answered(route.name, self.hedged)
        if isinstance(result, Opened) and result.hedged:
            route.hedges_won += 1
            self.router.observer.hedge_won(route.name)
        return result

    # The whole race ------------------------------------------------------------------------------------------------

    async def run_sequentially(self) -> Any:
        while True:
            route = await self.next_route()
            started = self.loop.time()
            try:
                return self.won(await self.attempt(route), started)
            except UpstreamError as error:
                self.failed(route, error, started)
            if self.ended():
                assert self.final_error is not None
                raise self.final_error

    def may_hedge(self) -> bool:
        return self.hedges_left > 0 and bool(self.pending) and not self.racing

    async def run(self) -> Opened:
        while True:
            if self.ended():
                assert self.final_error is not None
                raise self.final_error
            if not self.racing:
                route = await self.next_route()
                started = self.loop.time()
                if not self.may_hedge():  # the fast path: no task, no timer
                    try:
                        return self.won(await self.attempt(route), started)
                    except UpstreamError as error:
                        self.failed(route, error, started)
                        continue
                self.start(route, started)
            first_route, first_started = next(iter(self.racing.values()))
            timeout = None
            if len(self.racing) == 1 and self.pending and self.hedges_left and self.final_error is None:
                timeout = max(0.0, first_started + first_route.hedge_delay(self.router.hedge) - self.loop.time())
            done, _ = await asyncio.wait(self.racing, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                self.hedges_left -= 1
                route = self.next_with_room()
                if route is not None and self.router.budget.spend():  # else this attempt goes on alone
                    self.hedged = True
                    route.hedges += 1
                    self.start(route, self.loop.time(), hedge=True)
                continue
            winners = []
            for task in done:  # the failures first, all of them: none goes unrecorded when two end together
                route, started = self.racing.pop(task)
                error = task.exception()
                if error is None:
                    winners.append((task.result(), started))
                elif isinstance(error, UpstreamError):
                    self.failed(route, error, started)
                else:
                    raise error
            if winners:
                opened, started = winners[0]
                self.spare.extend(other for other, _ in winners[1:])
                return self.won(opened, started)

    def next_with_room(self) -> Route | None:
        while self.pending:
            route = self.pending.popleft()
            if route.has_room():
                return route
        return None

    def start(self, route: Route, started: float, hedge: bool = False) -> None:
        self.racing[asyncio.ensure_future(self.attempt(route, hedge))] = (route, started)

    async def cancel_the_rest(self) -> None:
        """Cancels the attempts still racing (the losers, or all when the caller left) and waits until each has
        closed its connection."""
        tasks = list(self.racing)
        self.racing.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        spare = [task.result() for task in tasks if not task.cancelled() and task.exception() is None]
        for opened in [*self.spare, *spare]:  # they got a first chunk in the same moment: closed unread
            if self.trace is not None:
                self.trace.attempt_ended(opened.route.name, "cancelled", 0.0, None)
            self.router.observer.attempt_cancelled(opened.route.name)
            await opened.aclose()
        self.spare.clear()
