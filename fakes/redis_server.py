"""A real Redis (Debian's redis-server) for the tests: its own temporary folder, a free port on 127.0.0.1, and
every write appended to its log file and synced (so a kill -9 loses nothing, as with a managed Redis) unless a
test asks for a Redis that forgets."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    def __init__(self, folder: Path, *, durable: bool = True) -> None:
        self.folder = folder
        self.durable = durable
        self.port = 0
        self.process: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> RedisServer:
        """Starts on the previous port when restarting (the processes under test know that address), else on a
        free one (again on another if that one was taken meanwhile)."""
        for _ in range(5):
            port = self.port or free_port()
            command = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
            command += ["--save", "", "--protected-mode", "no", "--logfile", str(self.folder / "redis.log")]
            if self.durable:
                command += ["--appendonly", "yes", "--appendfsync", "always"]
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait_until_answering(port):
                self.port = port
                return self
            self.process.kill()
            self.process.wait()
        raise RuntimeError(f"redis-server did not start; see {self.folder / 'redis.log'}")

    def _wait_until_answering(self, port: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                if client.ping():
                    return True
            time.sleep(0.02)
        return False

    def kill(self) -> None:
        """kill -9: no goodbye to the clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        self.kill()
