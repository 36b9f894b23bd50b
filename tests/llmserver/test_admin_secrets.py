"""The admin secrets file: made once, mode 600, and the same for processes that start together."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os

import pytest

from llmserver.admin_secrets import load_or_create
from tests.handlers.admin_client import bearer

STARTING_TOGETHER = 8


def _start(path: str, barrier, results) -> None:
    barrier.wait()
    try:
        kept = load_or_create(path)
        results.put((kept.admin_token, kept.cookie_secret))
    except Exception as exc:  # what a worker's start-up would have died of
        results.put(repr(exc))


def test_workers_starting_together_share_one_secrets_file(tmp_path):
    path = str(tmp_path / "data" / "secrets.json")
    os.makedirs(os.path.dirname(path))
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(STARTING_TOGETHER), context.Queue()
    processes = [context.Process(target=_start, args=(path, barrier, results)) for _ in range(STARTING_TOGETHER)]
    for process in processes:
        process.start()
    found = [results.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(30)
    assert all(isinstance(item, tuple) for item in found), found  # no process failed to start
    assert len(set(found)) == 1  # one token and one cookie secret for all
    kept = load_or_create(path)
    assert (kept.admin_token, kept.cookie_secret) == found[0]
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(os.path.dirname(path)) == ["secrets.json"]  # no temporary file left


def test_a_damaged_secrets_file_is_replaced_and_stays_private(tmp_path):
    path = tmp_path / "secrets.json"
    path.write_text("{not json")
    os.chmod(path, 0o644)
    made = load_or_create(str(path))
    assert load_or_create(str(path)) == made
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.fixture
def secrets_not_text(settings):
    """A secrets.json whose values are not text (hand-edited, or written by something else)."""
    os.makedirs(settings.data_dir)
    path = os.path.join(settings.data_dir, "secrets.json")
    with open(path, "w") as handle:
        json.dump({"admin_token": None, "cookie_secret": None}, handle)
    return path


@pytest.mark.gen_test
async def test_secrets_that_are_not_text_are_made_again_never_used_as_none(
    secrets_not_text, http_server, base_url, services, caplog
):
    assert services.admin_token != "None" and services.cookie_secret != "None"
    refused = await bearer(base_url, "None").fetch("GET", "/admin/api/status")
    assert refused.code == 401
    assert (await bearer(base_url, services.admin_token).fetch("GET", "/admin/api/status")).code == 200
    with open(secrets_not_text) as handle:
        kept = json.load(handle)
    assert kept == {"admin_token": services.admin_token, "cookie_secret": services.cookie_secret}
    assert os.stat(secrets_not_text).st_mode & 0o777 == 0o600
    said = [record.getMessage() for record in caplog.get_records("setup")]
    assert any("secrets.json" in line and "new ones are made" in line for line in said), said


@pytest.mark.parametrize("token,warned", [("short-token", True), ("t" * 32, False)])
def test_a_short_admin_token_is_warned_of_at_start(tmp_path, caplog, token, warned):
    from llmserver.services import admin_secrets
    from llmserver.settings import Settings

    with caplog.at_level(logging.WARNING, logger="llmserver"):
        assert admin_secrets(Settings(data_dir=str(tmp_path), admin_token=token)).admin_token == token
    assert ("ADMIN_TOKEN has" in caplog.text) is warned
