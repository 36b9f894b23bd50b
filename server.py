"""Custom LLM Server: an OpenAI-compatible streaming endpoint for Agora's Conversational AI engine and any client.

Run `python server.py --help` for the settings; the README explains them.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jinja2
import tornado.httpserver
import tornado.httputil
import tornado.ioloop
import tornado.netutil
import tornado.web

from handlers import default_handlers
from handlers.auth import apply_forwarded_headers
from handlers.base import NotFoundHandler, StaticFiles
from llmserver.audio.library import NAME_PATTERN
from llmserver.services import Services, StartupError, build_services, check_shared_state
from llmserver.settings import Settings, load_settings
from llmserver.workers import STARTUP_FAILED, run_workers

ROOT = os.path.dirname(os.path.abspath(__file__))
logger = logging.getLogger("llmserver")
access_log = logging.getLogger("tornado.access")
# Tornado itself never refuses a body for its size (it could only answer a bare 400): each handler has its own
# limit and answers 413 in its own error shape (handlers.base.BodyLimit).
TORNADO_BODY_LIMIT = 1 << 50


class ServerApplication(tornado.web.Application):
    def __init__(self, services: Services, **settings: Any) -> None:
        super().__init__(default_handlers, services=services, **settings)
        self.trusted_proxies = services.settings.trusted_proxies

    def find_handler(self, request: tornado.httputil.HTTPServerRequest, **kwargs: Any) -> tornado.web._HandlerDelegate:
        # The first thing that sees each request: settle who the client is before any handler looks.
        apply_forwarded_headers(request, self.trusted_proxies)
        return super().find_handler(request, **kwargs)


def make_app(services: Services) -> tornado.web.Application:
    templates = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(ROOT, "templates")), autoescape=True)
    templates.globals["clip_name_pattern"] = NAME_PATTERN
    return ServerApplication(
        services,
        default_handler_class=NotFoundHandler,
        jinja2_env=templates,
        static_path=os.path.join(ROOT, "static"),
        static_handler_class=StaticFiles,
        cookie_secret=services.cookie_secret,
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"samesite": "Strict"},
        serve_traceback=False,
        log_function=log_request,
    )


class Listener(tornado.httpserver.HTTPServer):
    """Tornado's HTTP server, with an accept loop that survives running out of file descriptors: Tornado's raises
    on every readiness event, which logged a traceback per pending connection (64,314 within seconds at the
    descriptor limit). Here the socket is left alone for a moment and the condition logged at most every 10 s;
    the connections wait in the kernel's backlog meanwhile."""

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = self._accept_from(sock)

    def _accept_from(self, sock: socket.socket) -> Callable[[], None]:
        loop = tornado.ioloop.IOLoop.current()
        state = {"listening": True, "removed": False, "refused": 0, "logged_at": -math.inf}

        def resume() -> None:
            if not state["removed"] and not state["listening"]:
                state["listening"] = True
                loop.add_handler(sock, accept, tornado.ioloop.IOLoop.READ)

        def accept(fd: Any, events: int) -> None:
            for _ in range(ACCEPTS_PER_EVENT):
                if state["removed"]:
                    return
                try:
                    connection, address = sock.accept()
                except BlockingIOError:
                    return
                except ConnectionAbortedError:
                    continue
                except OSError as exc:
                    if exc.errno not in RESOURCE_ERRORS:
                        raise
                    state["refused"] += 1
                    now = time.monotonic()
                    if now - state["logged_at"] >= ACCEPT_LOG_SECONDS:
                        logger.warning(
                            "cannot accept connections: %s (%d time(s) since the last report); raise the open-files "
                            "limit (ulimit -n) or lower MAX_STREAMS",
                            exc.strerror,
                            state["refused"],
                        )
                        state["logged_at"], state["refused"] = now, 0
                    state["listening"] = False
                    loop.remove_handler(sock)
                    loop.call_later(ACCEPT_PAUSE_SECONDS, resume)
                    return
                self._handle_connection(connection, address)

        def remove() -> None:
            state["removed"] = True
            if state["listening"]:
                loop.remove_handler(sock)

        loop.add_handler(sock, accept, tornado.ioloop.IOLoop.READ)
        return remove


ACCEPTS_PER_EVENT = 128
ACCEPT_PAUSE_SECONDS = 0.1
ACCEPT_LOG_SECONDS = 10.0
RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def make_http_server(app: tornado.web.Application) -> tornado.httpserver.HTTPServer:
    settings = app.settings["services"].settings
    return Listener(
        app,
        max_body_size=TORNADO_BODY_LIMIT,
        # Headers must arrive (and a kept-alive connection send its next request) within idle_timeout, a body within
        # body_timeout: a socket that sends part of a request and then nothing gives its place back.
        idle_connection_timeout=settings.idle_timeout,
        body_timeout=settings.body_timeout,
    )


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log line, without query strings: the admin URL carries the admin token."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    access_log.log(
        level,
        "%d %s %s (%s) %.2fms",
        status,
        request.method,
        request.path,
        request.remote_ip,
        1000.0 * request.request_time(),
    )


async def drain(services: Services, grace: float) -> None:
    """Waits for running requests to finish, at most `grace` seconds."""
    deadline = time.monotonic() + grace
    while services.request_log.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def serve(settings: Settings, announce: Callable[[list[str]], None] | None = None, worker: int = 0) -> None:
    """Serves until SIGTERM or SIGINT, then drains. `announce` (a worker's) gets the start-up lines instead of
    stdout, and the port is bound with SO_REUSEPORT beside the other workers'. Workers share one data directory:
    worker 0 keeps every process's requests in its history, the others their own."""
    logger.info("event loop: %s", type(asyncio.get_running_loop()).__module__.split(".")[0])
    services = build_services(settings, keeps_others_history=worker == 0)
    services.start_background_work()
    if services.shared is not None and not await services.shared.listening():
        await services.aclose()
        raise StartupError("Redis at REDIS_URL answered, then did not let this process subscribe to its announcements")
    app = make_app(services)
    server = make_http_server(app)
    try:
        sockets = tornado.netutil.bind_sockets(
            settings.port, settings.host, backlog=settings.backlog, reuse_port=announce is not None
        )
    except OSError as exc:
        await services.aclose()
        raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}") from None
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]  # the OS's choice when --port is 0
    shown_host = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0", "::") else settings.host
    upstreams = services.upstreams
    if len(upstreams.routes) > 1:
        hedging = upstreams.status()["hedging"]
        which = f"upstreams: {upstreams.names}; hedging {hedging}{' ms' if isinstance(hedging, float) else ''}"
    else:
        named = upstreams.routes[0].name
        shown = named if named not in ("default", "offline") else upstreams.mode  # one of an upstreams file: its name
        which = f"upstream: {shown}{f' {upstreams.base_url}' if upstreams.base_url else ''}"
    shared = " shared through Redis" if services.shared is not None else ""
    admin_url = f"http://{shown_host}:{port}/admin"
    lines = [
        f"Custom LLM Server listening on http://{shown_host}:{port} ({which}){shared}",
        f"Admin dashboard: {admin_url} (token from ADMIN_TOKEN)"
        if settings.admin_token
        else f"Admin dashboard: {admin_url}?token={services.admin_token}",
    ]
    # Before the start line: a SIGTERM sent as soon as it appears must drain, not kill the process outright.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if announce is None:
        for line in lines:
            print(line, flush=True)
    else:
        announce(lines)

    # Objects made at start-up (the knowledge index, the SDK) live as long as the process: keep them out of the
    # garbage collector's scans, which otherwise add pauses to every stream.
    gc.freeze()
    await stop.wait()

    logger.info("shutting down: %d request(s) in flight", services.request_log.in_flight)
    server.stop()
    services.shutting_down = True  # kept-alive connections may still send requests: they get 503
    await drain(services, settings.shutdown_grace)
    await server.close_all_connections()
    await services.aclose()


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop (libuv: measured faster on every path, see the README's performance section), or asyncio's
    own (None) when it is asked for or uvloop is not installed."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise StartupError(
                "EVENT_LOOP=uvloop, but uvloop is not installed (pip install -r requirements.txt)"
            ) from None
        return None
    return uvloop.new_event_loop


def run_worker(settings: Settings, announce: Callable[[list[str]], None] | None = None, worker: int = 0) -> int:
    """The server (or one of --workers N): serves until SIGTERM (exit 0), or says why it cannot start (exit 2)."""
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(settings.event_loop)) as runner:
            runner.run(serve(settings, announce, worker))
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return STARTUP_FAILED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(argv)
    if settings.workers > 1:
        if not settings.redis_url:
            print(
                f"error: {settings.workers} workers (--workers or WORKERS) need REDIS_URL (or --redis-url): they "
                "share the knowledge base, the audio clips, the tool switch, the conversation memory, the live log "
                "and the admin sign-in through Redis. Start one (for example `redis-server`) and set "
                "REDIS_URL=redis://localhost:6379/0, or run one worker.",
                file=sys.stderr,
            )
            return STARTUP_FAILED
        try:
            check_shared_state(settings)  # once, here, rather than once per worker
        except StartupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return STARTUP_FAILED
        return run_workers(settings, run_worker)
    return run_worker(settings)


if __name__ == "__main__":
    sys.exit(main())
