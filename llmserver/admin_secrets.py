"""The admin token and the cookie secret: generated once and kept, so a restart does not sign operators out.

Kept in DATA_DIR/secrets.json (mode 600), or in Redis when workers and instances share it (all of them must sign
and check cookies alike). ADMIN_TOKEN and COOKIE_SECRET, when set, win. A kept value that is not a non-empty string
is never used (as text it would become a guessable secret such as "None"): the secrets are made again.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
from dataclasses import dataclass
from typing import Any

from .files import stage_file, sync_folder, write_atomically

logger = logging.getLogger("llmserver.admin")


@dataclass(frozen=True)
class AdminSecrets:
    admin_token: str
    cookie_secret: str

    def to_json(self) -> str:
        return json.dumps({"admin_token": self.admin_token, "cookie_secret": self.cookie_secret})

    @classmethod
    def from_json(cls, text: str | bytes) -> AdminSecrets:
        """The secrets as to_json wrote them; ValueError for anything else."""
        data: Any = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        values = [data.get("admin_token"), data.get("cookie_secret")]
        # Only what generate() makes: non-empty text without surrounding spaces (a sign-in strips those, so such a
        # token could never be presented).
        if not all(isinstance(value, str) and value and value == value.strip() for value in values):
            raise ValueError("admin_token and cookie_secret must be non-empty strings")
        return cls(*values)


def generate() -> AdminSecrets:
    return AdminSecrets(secrets.token_urlsafe(24), secrets.token_urlsafe(32))


def keep(path: str, kept: AdminSecrets) -> None:
    """Replaces the file's secrets with `kept` (the ones a deployment shares), mode 600."""
    write_atomically(path, _encoded(kept), mode=0o600)


def _encoded(kept: AdminSecrets) -> bytes:
    return kept.to_json().encode()


def load_or_create(path: str) -> AdminSecrets:
    """The secrets in `path`, made (mode 600) if the file does not exist or cannot be read as ours. Processes
    starting together (workers sharing a data directory) all end up with the one file's secrets: a new file is
    put in place whole and only if there is none, and a process that loses that race reads the winner's."""
    for _ in range(5):
        try:
            return _read(path)
        except FileNotFoundError:
            damaged = False
        except (OSError, ValueError) as exc:
            damaged = True  # not ours to read: replaced
            logger.warning("the admin secrets in %s cannot be used (%s); new ones are made", path, exc)
        made = generate()
        staged = stage_file(path, _encoded(made), mode=0o600)  # never readable by others, not even for a moment
        try:
            if damaged:
                staged.commit()
            else:
                staged.commit_new()
        except FileExistsError:
            continue  # another process made it meanwhile: read theirs
        except FileNotFoundError:
            continue  # a process starting beside this one cleared the folder's temporary files: again
        finally:
            staged.discard()
        sync_folder(os.path.dirname(os.path.abspath(path)))
        return made
    raise OSError(errno.EAGAIN, "the secrets file keeps changing under this process")


def _read(path: str) -> AdminSecrets:
    with open(path, "rb") as handle:
        return AdminSecrets.from_json(handle.read())
