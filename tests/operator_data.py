"""The guard that keeps the tests out of the operator's data directory.

While a guard is active, everything the test process does to a path inside the guarded folder is refused
(PermissionError, so nothing there is read or changed) and recorded with the test that did it: opening a file,
making, renaming, linking, removing or listing one, connecting SQLite to one (Python's audit events for all of
these), and starting `server.py` with a data directory (or knowledge file, audio folder, tools file) there,
`--data-dir` and `DATA_DIR` unset included (the default, `data` in the working directory).

Why the tests' own actions and not a comparison of the folder before and after the session: a server the operator
runs from the same checkout (the README's first command) writes its history there while the tests run, and the
comparison blamed the tests for it. What another process does is none of the guard's business; what this one does,
or starts a server to do, is all of it. (A test that started some other program writing there would not be seen:
the tests start none.)
"""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass, field
from typing import Any

# Audit events that name a path, and which of their arguments are paths (the others are modes, flags, fds).
PATH_ARGUMENTS: dict[str, tuple[int, ...]] = {
    "open": (0,),
    "os.rename": (0, 1),  # os.replace too
    "os.remove": (0,),
    "os.mkdir": (0,),
    "os.rmdir": (0,),
    "os.link": (0, 1),
    "os.symlink": (1,),
    "os.truncate": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.utime": (0,),
    "os.listdir": (0,),
    "os.scandir": (0,),
    "shutil.copyfile": (0, 1),
    "shutil.copytree": (0, 1),
    "shutil.move": (0, 1),
    "shutil.rmtree": (0,),
    "sqlite3.connect": (0,),
}
# server.py's path settings: flag, environment variable.
SERVER_PATHS = (("--data-dir", "DATA_DIR"), ("--knowledge", "KNOWLEDGE_FILE"), ("--audio-dir", "AUDIO_DIR"),
                ("--tools-file", "TOOLS_FILE"))  # fmt: skip

_active: list[DataGuard] = []
_hooked = False


@dataclass
class DataGuard:
    folder: str
    test: str = "(outside a test)"  # who is running now, for the record
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._roots = {os.path.abspath(self.folder), os.path.realpath(self.folder)}

    def __enter__(self) -> DataGuard:
        global _hooked
        if not _hooked:  # an audit hook cannot be removed: one for the process, serving the active guards
            sys.addaudithook(_audit)
            _hooked = True
        _active.append(self)
        return self

    def __exit__(self, *_: Any) -> None:
        _active.remove(self)

    def inside(self, path: Any, cwd: str | None = None) -> bool:
        if isinstance(path, int) or path is None:
            return False  # a file descriptor: its path was checked when it was opened
        try:
            text = os.fsdecode(path)
        except TypeError:
            return False
        resolved = os.path.abspath(os.path.join(cwd or os.getcwd(), text))
        return any(resolved == root or resolved.startswith(root + os.sep) for root in self._roots)

    def refuse(self, what: str) -> None:
        self.violations.append(f"{self.test}: {what}")
        raise PermissionError(errno.EACCES, f"a test touched the operator's data ({self.folder}): {what}")

    def check(self, event: str, arguments: tuple[Any, ...]) -> None:
        if event == "subprocess.Popen":
            self.check_server(*arguments)
            return
        for index in PATH_ARGUMENTS[event]:
            if index < len(arguments) and self.inside(arguments[index]):
                self.refuse(f"{event} {os.fsdecode(arguments[index])}")

    def check_server(self, executable: Any, arguments: Any, cwd: Any, env: Any) -> None:
        """A server.py started with any of its files in the folder (its defaults resolved as it would)."""
        if isinstance(arguments, (str, bytes)):
            arguments = [arguments]
        words = [os.fsdecode(word) for word in arguments or ()]
        if not any(os.path.basename(word) == "server.py" for word in words):
            return
        environment = os.environ if env is None else {os.fsdecode(k): os.fsdecode(v) for k, v in env.items()}
        directory = os.fsdecode(cwd) if cwd is not None else os.getcwd()
        for flag, variable in SERVER_PATHS:
            value = _flag_value(words, flag)
            if value is None:
                value = environment.get(variable)
            if value is None and flag == "--data-dir":
                value = "data"  # server.py's default, in its working directory
            if value is not None and self.inside(value, directory):
                self.refuse(f"server.py with {flag} {os.path.join(directory, value)}")


def _flag_value(words: list[str], flag: str) -> str | None:
    for index, word in enumerate(words):
        if word == flag and index + 1 < len(words):
            return words[index + 1]
        if word.startswith(flag + "="):
            return word[len(flag) + 1 :]
    return None


def _audit(event: str, arguments: tuple[Any, ...]) -> None:
    if not _active or (event not in PATH_ARGUMENTS and event != "subprocess.Popen"):
        return  # the common case, as cheap as it can be: the hook hears every audit event of the process
    for guard in list(_active):
        guard.check(event, arguments)
