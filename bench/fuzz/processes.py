"""The campaign's processes: the server, the fake upstream and the raw upstream, on ports the OS picks, each writing
to a file of the campaign's folder (the repository's own data/ is never touched), started with fakes.processes in a
thread so the campaign's event loop goes on meanwhile."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
from collections.abc import Iterable

from fakes import processes
from fakes.processes import StartRefused
from llmserver.settings import Settings

from .wire import HOST

FAKE_WORDS = 12  # the fake upstream's answer: "word0 word1 ... word11 "
SHIPPED_PCM = os.path.join(processes.ROOT, "audio", "file.pcm")  # the clip a new data directory starts with
SHIPPED_TRANSCRIPT = os.path.join(processes.ROOT, "audio", "file.txt")

__all__ = [
    "FAKE_WORDS",
    "SHIPPED_PCM",
    "SHIPPED_TRANSCRIPT",
    "ServerProcess",
    "StartRefused",
    "start_fake_upstream",
    "start_raw_upstream",
    "start_server",
]


def clean_environment(**extra: str) -> dict[str, str]:
    """This environment without any of the server's settings (or the SDK's), plus `extra`."""
    names = {name for f in dataclasses.fields(Settings) for name in f.metadata["env"]}
    environment = {
        key: value for key, value in os.environ.items() if key not in names and not key.startswith(("OPENAI_", "LLM_"))
    }
    environment["PYTHONUNBUFFERED"] = "1"
    environment.update(extra)
    return environment


async def stop(process: subprocess.Popen) -> int | None:
    """SIGTERM, as an operator stops it; SIGKILL after 20 s. Returns the exit status."""
    return await asyncio.to_thread(processes.stop, process)


@dataclasses.dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    admin_token: str
    log_path: str

    def rss_mb(self) -> float | None:
        try:
            with open(f"/proc/{self.process.pid}/status", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    async def stop(self) -> int | None:
        return await stop(self.process)

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        while self.process.poll() is None:
            await asyncio.sleep(0.01)


async def _start_fake(folder: str, name: str, module: str, args: list[str]) -> tuple[subprocess.Popen, int, str]:
    out_path = os.path.join(folder, f"{name}.out")
    err_path = os.path.join(folder, f"{name}.err")
    process, port = await asyncio.to_thread(
        processes.start_module, module, args, out_path, err_path, clean_environment()
    )
    return process, port, out_path


async def start_fake_upstream(
    folder: str, name: str, faults: float = 0.0, seed: int = 0, call_tool: str | None = None
) -> tuple[subprocess.Popen, int, str]:
    """The fake upstream (`python -m fakes.upstream`): (process, port, the file of its stdout: the port, then
    with --faults one JSON line per chat request)."""
    args = ["--words", str(FAKE_WORDS)]
    if faults:
        args += ["--faults", str(faults), "--fault-seed", str(seed)]
    if call_tool:
        args += ["--call-tool", call_tool]
    return await _start_fake(folder, name, "fakes.upstream", args)


async def start_raw_upstream(folder: str, name: str, answer: str) -> tuple[subprocess.Popen, int]:
    """The raw upstream (`python -m fakes.raw_upstream --answer NAME`), answering every request with the bytes of
    one of its MALFORMED_ANSWERS."""
    process, port, _ = await _start_fake(folder, name, "fakes.raw_upstream", ["--answer", answer])
    return process, port


async def start_server(
    folder: str,
    name: str,
    data_dir: str,
    upstream_port: int | None,
    args: Iterable[str] = (),
    admin_token: str | None = None,
    **env: str,
) -> ServerProcess:
    """`python server.py --port 0 --data-dir <data_dir>`, its stdout and stderr in `<folder>/<name>.log`."""
    log_path = os.path.join(folder, f"{name}.log")
    extra = dict(env)
    extra.setdefault("SHUTDOWN_GRACE", "2")
    if upstream_port is not None:
        extra["OPENAI_BASE_URL"] = f"http://{HOST}:{upstream_port}/v1"
        extra["OPENAI_API_KEY"] = "sk-fuzz"
    command = ["--host", HOST, "--data-dir", data_dir, *args]
    if admin_token:
        command += ["--admin-token", admin_token]
    process, listening = await asyncio.to_thread(processes.start_server, log_path, command, clean_environment(**extra))
    token_match = re.search(r"\?token=(\S+)", listening.group(2))
    token = admin_token or (token_match.group(1) if token_match else "")
    return ServerProcess(process, int(listening.group(1)), token, log_path)
