"""Fixtures: a real Redis, and two instances of the server (two services, two HTTP servers, named "a" and "b")
sharing it, as two machines behind a load balancer would; each has its own data directory. `partitioned`: the same
two, b reaching Redis through a proxy the test can cut."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass

import pytest
import tornado.testing

from fakes.redis_server import RedisServer
from fakes.tcp_proxy import TcpProxy
from llmserver.services import Services, build_services
from server import make_app, make_http_server


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@dataclass
class Instance:
    services: Services
    base_url: str
    server: object

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.services.admin_token}"}


def start_instance(settings, name: str) -> Instance:
    services = build_services(settings, instance=name)
    services.start_background_work()
    sock, port = tornado.testing.bind_unused_port()
    server = make_http_server(make_app(services))
    server.add_socket(sock)
    return Instance(services, f"http://127.0.0.1:{port}", server)


async def stop_instance(instance: Instance) -> None:
    instance.server.stop()
    await instance.server.close_all_connections()
    await instance.services.aclose()


@pytest.fixture
def shared_settings(settings, redis_server, tmp_path):
    return dataclasses.replace(settings, redis_url=redis_server.url, data_dir=str(tmp_path / "a"))


@pytest.fixture
def instances(shared_settings, io_loop, tmp_path):
    """Instances "a" and "b", both listening to Redis's announcements before the test begins."""
    started: list[Instance] = []

    async def start() -> None:
        for name in ("a", "b"):
            settings = dataclasses.replace(shared_settings, data_dir=str(tmp_path / name))
            started.append(start_instance(settings, name))
        for instance in started:
            await asyncio.wait_for(instance.services.shared.state.listening.wait(), 10)

    io_loop.run_sync(start)
    yield started
    for instance in started:
        io_loop.run_sync(lambda instance=instance: stop_instance(instance))


@pytest.fixture
def partitioned(shared_settings, redis_server, io_loop, tmp_path):
    """Instances "a" (connected to Redis directly) and "b" (through a proxy the test can cut: b alone loses Redis),
    both listening before the test begins; yields (a, b, proxy)."""
    started: list[Instance] = []
    proxy = TcpProxy(redis_server.port)

    async def start() -> None:
        b_url = f"redis://127.0.0.1:{proxy.port}/0"
        for name, url in (("a", redis_server.url), ("b", b_url)):
            settings = dataclasses.replace(shared_settings, redis_url=url, data_dir=str(tmp_path / name))
            started.append(start_instance(settings, name))
        for instance in started:
            await asyncio.wait_for(instance.services.shared.state.listening.wait(), 10)

    io_loop.run_sync(start)
    yield (*started, proxy)
    for instance in started:
        io_loop.run_sync(lambda instance=instance: stop_instance(instance))
    proxy.stop()
