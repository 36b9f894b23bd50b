"""--workers N: N processes serving one port, and the supervisor that keeps them running.

The supervisor reserves the port (a socket bound with SO_REUSEPORT that never listens, so it receives no
connections), then forks the workers; each binds its own listening socket to that port with SO_REUSEPORT and the
kernel spreads new connections over them. A worker that dies is logged and replaced (after a pause if it keeps
dying at once); one that cannot start at all (exit code 2: a bad setting, Redis unreachable) stops the lot, with
its message. SIGTERM or SIGINT is passed to every worker, each drains its streams as a single process does, and
the supervisor exits 0 when all have.

The workers share state through Redis (REDIS_URL, required) and their metrics through files in
PROMETHEUS_MULTIPROC_DIR, a fresh temporary folder unless the operator names one.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from .metrics import Metrics
from .settings import Settings

logger = logging.getLogger("llmserver.workers")

STARTUP_FAILED = 2  # a worker's exit code when it could not start (the server's own, as a single process)
QUICK_DEATH_SECONDS = 5.0  # a worker that dies sooner than this after starting is restarted after a pause
RESTART_PAUSES = (0.1, 0.5, 1.0, 2.0, 5.0)
SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
PR_SET_PDEATHSIG = 1

# run_worker(settings, ready, number) serves until SIGTERM and returns the exit code; ready(lines) once it is
# listening. A worker restarted after a death keeps its number.
WorkerMain = Callable[[Settings, Callable[[list[str]], None], int], int]


@dataclass
class Worker:
    number: int
    pid: int
    started: float
    ready_pipe: int | None  # read end: the worker writes its start-up lines when it listens (None once read)


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket holding the port for the workers (resolving port 0 to the OS's choice) without accepting anything."""
    family, kind, protocol, _, address = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
    reservation = socket.socket(family, kind, protocol)
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reservation.bind(address)
    return reservation


def prepare_metrics_folder() -> str | None:
    """The folder the workers' metrics meet in; returns it when the supervisor made it (and removes it at exit)."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        for stale in glob.glob(os.path.join(folder, "*.db")):  # a previous run's: the library's instructions
            os.unlink(stale)
        return None
    folder = tempfile.mkdtemp(prefix="llm-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    return folder


class Supervisor:
    def __init__(self, settings: Settings, run_worker: WorkerMain) -> None:
        self.settings = settings
        self.run_worker = run_worker
        self.workers: dict[int, Worker] = {}
        self.stopping = False
        self.deadline = 0.0  # once stopping: when workers that have not finished are killed
        self.exit_code = 0
        self.quick_deaths = 0

    def run(self) -> int:
        try:
            reservation = reserve_port(self.settings.host, self.settings.port)
        except OSError as exc:
            print(f"error: cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror}", file=sys.stderr)
            return STARTUP_FAILED
        self.settings = replace(self.settings, port=reservation.getsockname()[1])
        made_folder = prepare_metrics_folder()
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # taken one at a time by sigtimedwait below
        try:
            for number in range(self.settings.workers):
                self.start_worker(number)
            if self.wait_until_ready():
                self.supervise()
        finally:
            reservation.close()
            if made_folder:
                shutil.rmtree(made_folder, ignore_errors=True)
        return self.exit_code

    def start_worker(self, number: int) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(read_end)
            code = 1
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
                stop_with_supervisor(os.getppid())
                code = self.run_worker(self.settings, lambda lines: announce(write_end, lines), number)
            except BaseException:
                logger.exception("worker %d failed", number)
            finally:
                os._exit(code)
        os.close(write_end)
        self.workers[pid] = Worker(number, pid, time.monotonic(), read_end)

    def wait_until_ready(self) -> bool:
        """Waits for every worker to listen, then prints the start-up lines once. False if they could not start."""
        lines: list[str] = []
        while True:
            waiting = {w.ready_pipe: w for w in self.workers.values() if w.ready_pipe is not None}
            if not waiting:
                break
            readable, _, _ = select.select(list(waiting), [], [], 0.2)
            for pipe in readable:
                message = self.read_announcement(waiting[pipe])
                lines = lines or message.splitlines()
            if self.handle_signals(timeout=0) or self.exit_code:
                self.stop_all()
                return False
        if lines:
            lines[0] += f" ({self.settings.workers} workers)"
        for line in lines:
            print(line, flush=True)
        return True

    @staticmethod
    def read_announcement(worker: Worker) -> str:
        """The worker's start-up lines ("" if it died before listening); its pipe is closed after."""
        pipe, worker.ready_pipe = worker.ready_pipe, None
        if pipe is None:
            return ""
        try:
            return os.read(pipe, 65536).decode(errors="replace")
        finally:
            os.close(pipe)

    def supervise(self) -> None:
        while self.workers:
            if self.handle_signals(timeout=1.0) and not self.stopping:
                self.stop_all()
            for worker in self.workers.values():  # a replacement's start-up lines: read, not shown again
                if worker.ready_pipe is not None and select.select([worker.ready_pipe], [], [], 0)[0]:
                    self.read_announcement(worker)

    def handle_signals(self, timeout: float) -> bool:
        """Takes the signals that arrived (within `timeout`); returns True when asked to stop."""
        stop = False
        info = signal.sigtimedwait(SIGNALS, timeout)
        while info is not None:
            if info.si_signo == signal.SIGCHLD:
                self.reap()
            else:
                stop = True
            info = signal.sigtimedwait(SIGNALS, 0)
        if self.stopping and time.monotonic() > self.deadline:
            for pid in self.workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return stop

    def reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            Metrics.worker_exited(pid)
            self.read_announcement(worker)
            if self.stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code == STARTUP_FAILED:
                logger.error("worker %d (pid %d) could not start; stopping", worker.number, pid)
                self.exit_code = STARTUP_FAILED
                self.stop_all()
                continue
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            logger.error("worker %d (pid %d) died (%s); starting another", worker.number, pid, how)
            lived = time.monotonic() - worker.started
            self.quick_deaths = self.quick_deaths + 1 if lived < QUICK_DEATH_SECONDS else 0
            if self.quick_deaths:
                time.sleep(RESTART_PAUSES[min(self.quick_deaths, len(RESTART_PAUSES)) - 1])
            self.start_worker(worker.number)

    def stop_all(self) -> None:
        if not self.stopping:
            logger.info("stopping %d worker(s)", len(self.workers))
        self.stopping = True
        self.deadline = time.monotonic() + self.settings.shutdown_grace + 5
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def stop_with_supervisor(supervisor: int) -> None:
    """Asks Linux to send this worker SIGTERM (a graceful stop) if the supervisor dies, even by kill -9: no worker
    outlives it to hold the port alone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: the worker stops when its supervisor's SIGTERM reaches it
    if os.getppid() != supervisor:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def announce(pipe: int, lines: list[str]) -> None:
    with contextlib.suppress(OSError):
        os.write(pipe, "\n".join(lines).encode())
        os.close(pipe)


def run_workers(settings: Settings, run_worker: WorkerMain) -> int:
    return Supervisor(settings, run_worker).run()
