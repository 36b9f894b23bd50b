"""Fault injection: a change run in a child process that dies (os._exit, as kill -9 would) at its n-th file-system
step, for every n, to prove that stored data survives a crash at any moment."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

_CHILD = """
import os, sys
{setup}
steps = 0
def crashing(real):
    def step(*args, **kwargs):
        global steps
        steps += 1
        if steps == {crash_at}:
            os._exit(9)
        return real(*args, **kwargs)
    return step
for name in ("replace", "rename", "unlink", "fsync", "link"):
    setattr(os, name, crashing(getattr(os, name)))
{change}
os._exit(0)
"""
SETUP_IMPORTS = (
    "from llmserver.audio.library import AudioLibrary\nfrom llmserver.knowledge.store import KnowledgeBase\n"
)


def crash_at_every_step(setup: str, change: str, folder: Path, pristine: dict[str, bytes]) -> Iterator[int]:
    """Yields n after running `change` in a child that dies at its n-th step (the folder restored to `pristine`
    first), for n = 1, 2, ... until the change completes without reaching step n."""
    crash_at = 1
    while True:
        shutil.rmtree(folder)
        folder.mkdir()
        for name, data in pristine.items():
            (folder / name).write_bytes(data)
        code = _CHILD.format(setup=SETUP_IMPORTS + setup, change=change, crash_at=crash_at)
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
        assert result.returncode in (0, 9), result.stderr.decode()
        if result.returncode == 0:
            return
        yield crash_at
        crash_at += 1
