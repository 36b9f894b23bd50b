"""Atomic file writes: the stored knowledge base and audio clips are never left half-written."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass


@dataclass
class StagedFile:
    """A file written in full beside its destination, not yet in place."""

    temporary: str
    path: str

    def commit(self) -> None:
        os.replace(self.temporary, self.path)

    def discard(self) -> None:
        if os.path.exists(self.temporary):
            os.unlink(self.temporary)


def stage_file(path: str, data: bytes) -> StagedFile:
    """Writes `data` to a temporary file in `path`'s folder and syncs it; commit() renames it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    staged = StagedFile(temporary, path)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o644)  # mkstemp makes 0600; stored data is an ordinary file
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        staged.discard()
        raise
    return staged


def write_atomically(path: str, data: bytes) -> None:
    """Temporary file in the same folder, fsync, rename: a crash leaves the old file or the new, never half of one."""
    staged = stage_file(path, data)
    try:
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    sync_folder(os.path.dirname(os.path.abspath(path)))


def sync_folder(folder: str) -> None:
    """Makes a rename in `folder` durable."""
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
