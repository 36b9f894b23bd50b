"""Fixtures: a fake upstream and the real server on the same IOLoop, each on a port the OS picks."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from pathlib import Path

import pytest
import tornado.ioloop

from fakes.upstream import FakeUpstream
from llmserver.services import SHIPPED_AUDIO, SHIPPED_KNOWLEDGE, build_services
from llmserver.settings import Settings
from server import make_app, make_http_server
from tests.operator_data import DataGuard

SERVER_KEY = "sk-server-key-for-tests"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPERATOR_DATA = os.path.join(ROOT, "data")  # the default DATA_DIR: the operator's, never the tests'
__all__ = ["ROOT", "SHIPPED_AUDIO", "SHIPPED_KNOWLEDGE"]


def files_in(folder: str | Path) -> dict[str, bytes]:
    """Every file of `folder` with its bytes (empty for a missing folder): to prove a refusal changed nothing."""
    folder = Path(folder)
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())} if folder.is_dir() else {}


def _tree(folder: str) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time."""
    found = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            status = os.stat(os.path.join(directory, name))
            found[os.path.join(directory, name)] = (status.st_size, status.st_mtime_ns)
    return found


@pytest.fixture(scope="session", autouse=True)
def operator_data_untouched():
    """Tests never read or write the operator's data: whatever a test does there is refused and reported (see
    tests/operator_data.py; a server the operator runs beside the tests may write there all it likes). The shipped
    defaults, which no server writes (they are only ever copied), are also compared before and after."""
    before = [_tree(SHIPPED_AUDIO), os.stat(SHIPPED_KNOWLEDGE).st_mtime_ns]
    with DataGuard(OPERATOR_DATA) as guard:
        yield guard
    assert not guard.violations, "tests touched the operator's data directory:\n" + "\n".join(guard.violations)
    assert [_tree(SHIPPED_AUDIO), os.stat(SHIPPED_KNOWLEDGE).st_mtime_ns] == before, "the shipped defaults changed"


@pytest.fixture(autouse=True)
def operator_data_guarded_per_test(request, operator_data_untouched):
    """Names the running test in what the guard reports."""
    operator_data_untouched.test = request.node.nodeid
    yield
    operator_data_untouched.test = "(between tests)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "settings(**overrides): settings of the server under test")


@pytest.fixture(autouse=True)
def no_errors_logged(caplog):
    """An unexpected exception inside the server is a failure even when the client got a clean error."""
    yield
    watched = ("llmserver", "tornado.application", "tornado.general", "asyncio")
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR and r.name.startswith(watched)]
    assert not errors, "the server logged errors: " + "; ".join(r.getMessage() for r in errors)


@pytest.fixture
def io_loop():
    """pytest-tornado's io_loop calls the deprecated make_current(); this one sets the asyncio loop instead."""
    loop = tornado.ioloop.IOLoop(make_current=False)
    asyncio.set_event_loop(loop.asyncio_loop)
    yield loop
    asyncio.set_event_loop(None)
    loop.close(all_fds=True)


@pytest.fixture
def fake_upstream(io_loop):
    """The fake upstream, strict: it refuses what OpenAI refuses (unknown fields, tool calls without results, results
    without calls, empty assistant turns), so a test sees what production would."""
    fake = FakeUpstream().start()
    fake.strict = True
    yield fake
    io_loop.run_sync(fake.stop)


@pytest.fixture
def settings(request, fake_upstream, tmp_path) -> Settings:
    """Settings of the server under test: the fake upstream, and a data directory of its own (which starts, as an
    operator's does, from the shipped knowledge base and clip)."""
    base = Settings(
        upstream="openai",
        base_url=fake_upstream.base_url,
        api_key=SERVER_KEY,
        upstream_retries=0,
        offline_word_delay=0.0,
        data_dir=str(tmp_path / "data"),
        embeddings="none",  # lexical retrieval, unless a test asks for the model (see the semantic fixture)
        server_tools=(),  # requests go upstream as they came, unless a test offers the server's tools
    )
    marker = request.node.get_closest_marker("settings")
    return dataclasses.replace(base, **marker.kwargs) if marker else base


@pytest.fixture
def services(settings, io_loop):
    services = build_services(settings)
    yield services
    io_loop.run_sync(services.aclose)


@pytest.fixture
def app(services):
    return make_app(services)


@pytest.fixture
def http_server(request, io_loop, _unused_port, app):
    """pytest-tornado's, but the server is made as server.py makes it (Tornado's own body limit lifted)."""
    server = make_http_server(app)
    server.add_socket(_unused_port[0])
    yield server
    server.stop()
    io_loop.run_sync(server.close_all_connections, timeout=request.config.option.async_test_timeout)


@pytest.fixture
def semantic(services):
    """The bundled model loaded and the knowledge base embedded, as they are shortly after a server starts."""
    services.start_background_work().join(120)
    assert services.retriever.semantic_ready, services.retriever.semantic_error
    return services.retriever
