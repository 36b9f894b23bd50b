"""Atomic file writes: the stored knowledge base and audio clips are never left half-written; damaged files set
aside, never deleted; and the one signal the shared storages (Redis) give a process that is behind."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

logger = logging.getLogger("llmserver.files")
TEMPORARY_PREFIX = ".tmp-"
T = TypeVar("T")


class StaleState(Exception):
    """The shared store holds a newer version than this process's copy: re-read it, then try the change again."""


@dataclass
class StagedFile:
    """A file written in full beside its destination, not yet in place."""

    temporary: str
    path: str

    def commit(self) -> None:
        os.replace(self.temporary, self.path)

    def commit_new(self) -> None:
        """Puts the file in place only if there is none (FileExistsError otherwise), whole or not at all; the
        temporary name stays until discard()."""
        os.link(self.temporary, self.path)

    def discard(self) -> None:
        if os.path.exists(self.temporary):
            os.unlink(self.temporary)


def stage_file(path: str, data: bytes, mode: int | None = None) -> StagedFile:
    """Writes `data` to a temporary file in `path`'s folder and syncs it; commit() renames it into place. Its
    permissions: `mode`, else the present file's."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, dir=folder)
    staged = StagedFile(temporary, path)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _mode_for(path) if mode is None else mode)  # mkstemp makes 0600
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        staged.discard()
        raise
    return staged


def _mode_for(path: str) -> int:
    """The file's present permissions, so a save never widens them; 0644 for a new file."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o644


def write_atomically(path: str, data: bytes, mode: int | None = None) -> None:
    """Temporary file in the same folder, fsync, rename: a crash leaves the old file or the new, never half of one.
    Its permissions: `mode`, else the present file's."""
    staged = stage_file(path, data, mode)
    try:
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    sync_folder(os.path.dirname(os.path.abspath(path)))


def sync_folder(folder: str) -> None:
    """Makes a rename in `folder` durable. The rename has happened already: a failure here is only logged."""
    try:
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        logger.warning("could not sync folder %s: %s", folder, exc)


def remove_stale_temporaries(folder: str) -> None:
    """Removes the temporary files a crash left in `folder` (call it at start, before anything writes there)."""
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.startswith(TEMPORARY_PREFIX):
            try:
                os.unlink(os.path.join(folder, entry))
            except OSError as exc:
                logger.warning("could not remove the temporary file %s: %s", entry, exc)


SQLITE_FILES = ("", "-wal", "-shm")  # a SQLite database in WAL mode: the file and its two companions


def set_aside(path: str, companions: tuple[str, ...] = ("",)) -> str:
    """Renames `path` (with the files named `path + suffix` for each of `companions`) to PATH.damaged-<time>, so that
    a new one can take its place and the old stays for whoever wants to look; returns the new name. A companion that
    does not exist is skipped; OSError when `path` itself cannot be renamed."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = f"{path}.damaged-{stamp}"
    count = 1
    while any(os.path.lexists(aside + suffix) for suffix in companions):
        count += 1
        aside = f"{path}.damaged-{stamp}-{count}"
    for suffix in companions:
        # The companions keep their suffixes: an aside SQLite file still finds its journal beside it.
        try:
            os.rename(path + suffix, aside + suffix)
        except FileNotFoundError:
            if not suffix:
                raise
    return aside


def open_database(path: str, *, wait: float = 10.0) -> sqlite3.Connection:
    """A SQLite connection in WAL mode that waits (up to `wait` seconds) for other processes' locks: workers
    share the history and the embedding cache. Switching to WAL takes a lock the busy timeout does not cover, so
    that step is retried."""
    connection = sqlite3.connect(path, check_same_thread=False, timeout=wait, isolation_level=None)
    deadline = time.monotonic() + wait
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return connection
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                connection.close()
                raise
            time.sleep(0.02)


def open_or_set_aside(path: str, open_database: Callable[[], T], what: str) -> T:
    """`open_database()` for the SQLite file at `path`; if what is there is damaged (not a database, a corrupt
    one, another program's, or not a file at all), it is set aside and a new one opened. Anything else (a full
    disk, a folder that cannot be written, another process's lock) leaves the file as it is and raises
    sqlite3.Error or OSError."""
    try:
        return open_database()
    except sqlite3.DatabaseError as exc:
        # SQLITE_ERROR on opening: the file is a database, but its tables are not the ones made here.
        damaged = exc.sqlite_errorname in ("SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_ERROR")
        if not (damaged or (os.path.lexists(path) and not os.path.isfile(path))):
            raise
        aside = set_aside(path, SQLITE_FILES)
        logger.warning("%s %s cannot be read (%s); set aside as %s, starting a new one", what, path, exc, aside)
    return open_database()
