"""The admin token and the cookie secret: generated once and kept, so a restart does not sign operators out.

Kept in DATA_DIR/secrets.json (mode 600), or in Redis when workers and instances share it (all of them must sign
and check cookies alike). ADMIN_TOKEN and COOKIE_SECRET, when set, win.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass

from .files import write_atomically


@dataclass(frozen=True)
class AdminSecrets:
    admin_token: str
    cookie_secret: str


def generate() -> AdminSecrets:
    return AdminSecrets(secrets.token_urlsafe(24), secrets.token_urlsafe(32))


def load_or_create(path: str) -> AdminSecrets:
    """The secrets in `path`, made (mode 600) if the file does not exist or cannot be read as ours."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return AdminSecrets(str(data["admin_token"]), str(data["cookie_secret"]))
    except (OSError, ValueError, KeyError, TypeError):
        made = generate()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path):
            os.chmod(path, 0o600)
        else:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
            os.close(descriptor)
        write_atomically(
            path, json.dumps({"admin_token": made.admin_token, "cookie_secret": made.cookie_secret}).encode()
        )
        return made
