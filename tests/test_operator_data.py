"""The guard over the operator's data (tests/operator_data.py), on a folder of its own: it stops and reports what
the tests do there, and ignores what a server running beside them does."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys

import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.client import stream
from tests.conftest import ROOT, _tree
from tests.handlers.admin_client import bearer
from tests.operator_data import DataGuard


def test_what_a_test_does_to_the_data_is_refused_and_reported(tmp_path):
    checkout = tmp_path / "checkout"
    data = checkout / "data"
    data.mkdir(parents=True)
    (data / "knowledge.json").write_text("{}")
    with DataGuard(str(data)) as guard:
        guard.test = "the test"
        for touch in (
            lambda: (data / "knowledge.json").read_text(),  # reading too
            lambda: (data / "new.json").write_text("{}"),
            lambda: os.rename(data / "knowledge.json", tmp_path / "moved.json"),
            lambda: os.listdir(data),
            lambda: sqlite3.connect(data / "history.sqlite3"),
        ):
            with pytest.raises(PermissionError):
                touch()
        # A server started on it, by flag, by environment, or by default (data/ in its working directory).
        for arguments, env in (
            (["--data-dir", str(data)], None),
            ([f"--data-dir={data}"], None),
            ([], {**os.environ, "DATA_DIR": str(data)}),
            ([], {k: v for k, v in os.environ.items() if k != "DATA_DIR"}),
        ):
            with pytest.raises(PermissionError):
                subprocess.Popen([sys.executable, "server.py", *arguments], cwd=checkout, env=env)
        open(tmp_path / "beside.json", "w").close()  # anything else is the test's own business
    assert len(guard.violations) == 9 and all(v.startswith("the test: ") for v in guard.violations)
    assert (data / "knowledge.json").read_text() == "{}" and sorted(os.listdir(data)) == ["knowledge.json"]


@pytest.mark.gen_test(timeout=60)
async def test_a_server_running_beside_the_tests_on_that_data_is_none_of_its_business(tmp_path, io_loop):
    """The operator's own server (the README's first command, in the same checkout) writes its history into the
    data directory while the tests run: that is not the tests touching it."""
    data = tmp_path / "data"
    token = "operators-token"
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_"))}
    operators = await asyncio.create_subprocess_exec(  # started before the guard: the operator's, not a test's
        sys.executable, os.path.join(ROOT, "server.py"), "--port", "0", "--data-dir", str(data),
        "--embeddings", "none", "--admin-token", token,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=environment, cwd=ROOT,
    )  # fmt: skip
    try:
        line = (await asyncio.wait_for(operators.stdout.readline(), 30)).decode()
        url = line.split("listening on ")[1].split()[0]
        await AsyncHTTPClient().fetch(url + "/healthz")
        before = _tree(str(data))
        with DataGuard(str(data)) as guard:
            result = await stream(url, "/chat/completions", {"messages": [{"role": "user", "content": "hello"}]})
            assert result.events[-1] == "[DONE]"
            history = await bearer(url, token).fetch("GET", "/admin/api/history")  # written by now
            assert json.loads(history.body)["records"]
        assert _tree(str(data)) != before  # the server wrote there: the old before/after comparison blamed the tests
        assert guard.violations == []
    finally:
        operators.terminate()
        await operators.wait()
