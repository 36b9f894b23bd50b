"""The versioned-store seam under the knowledge base and the audio library: each keeps its state with a version, in a
file (one process) or in Redis (several, llmserver/shared/), and changes it by optimistic commits.

A commit that finds the shared store at a newer version (another process changed it first) raises StaleState; the
change is then made again from the newer state, so that its checks (existence, conflicts) see the other change.
A process catches up by comparing versions: one GET in the usual case, a full read when behind, and a re-fill from
its own copy when the store lost its data.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from .files import StaleState

S = TypeVar("S")
S_co = TypeVar("S_co", covariant=True)
STALE_RETRIES = 5  # a change that keeps meeting newer shared state is refused (409) after this many tries


class VersionedStorage(Protocol[S]):
    """Where a state is kept. A file is not `shared`: it is never behind, and has nothing to catch up with."""

    shared: bool

    def stored_version(self) -> int | None:
        """The version the store holds; None when it holds nothing (a Redis that lost its data)."""
        ...

    def load(self, restore: S | None = None) -> S | None:
        """The stored state; with `restore`, an empty store is filled with it first."""
        ...


def change_with_retries(
    lock: threading.Lock, commit_once: Callable[[], None], catch_up: Callable[[], object], conflict: Exception
) -> None:
    """Runs `commit_once` under `lock`; when it raises StaleState, catches up (outside the lock) and tries again,
    up to STALE_RETRIES times, then raises `conflict`."""
    for _ in range(STALE_RETRIES):
        with lock:
            try:
                commit_once()
                return
            except StaleState:
                pass
        catch_up()
    raise conflict


def newer_state(storage: VersionedStorage[S], version: int, current: Callable[[], S]) -> S | None:
    """The stored state when the store is shared and at another version than `version`, else None. A store that
    lost its data is first filled again from `current()`, this process's copy."""
    if not storage.shared:
        return None
    stored = storage.stored_version()
    if stored == version:
        return None  # the usual case, every few seconds: one GET
    return storage.load(restore=current() if stored is None else None)
