"""The admin dashboard in a real headless Chromium (Debian's), driven by Playwright, against `python server.py`."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

import openai
import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from fakes import processes
from tests.audio_files import encode, tone
from tests.conftest import ROOT

ADMIN_TOKEN = "browser-test-admin-token"
ARTIFACTS = Path(ROOT) / "tests" / "artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextlib.contextmanager
def server_process(folder: Path, port: int = 0, settings: Mapping[str, str] = MappingProxyType({})) -> Iterator[str]:
    """`python server.py` in offline mode on the data in `folder`, with `settings` (environment variables) too;
    yields its URL."""
    environment = processes.server_environment(
        ADMIN_TOKEN=ADMIN_TOKEN, COOKIE_SECRET="browser-tests", OFFLINE_WORD_DELAY="0", AUDIO_PACE="burst"
    )
    environment.update(settings)
    arguments = ["--data-dir", str(folder / "data"), "--port", str(port)]
    process, listening = processes.start_server(str(folder / "server.log"), arguments, environment)
    try:
        yield processes.server_url(listening)
    finally:
        processes.stop(process, 15)


@pytest.fixture(scope="module")
def server_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server")


@pytest.fixture(scope="module")
def server_url(server_folder: Path) -> Iterator[str]:
    with server_process(server_folder) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's chromium is not installed: run the README's test command, which installs it")
    chinese_fonts = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True).stdout
    if not chinese_fonts.strip():
        pytest.fail("no Chinese font: the screenshots would show boxes; the README's test command installs one")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, server_url: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto(f"{server_url}/admin?token={ADMIN_TOKEN}")
    expect(page.locator("#tab-log")).to_be_visible()
    yield page
    context.close()


def stream_chunks(server_url: str, endpoint: str, content: str) -> list[dict]:
    """Streams a completion with the official SDK from /v1/chat, /v1/rag or /v1/audio; returns the chunks."""
    base_url = f"{server_url}/v1" if endpoint == "chat" else f"{server_url}/v1/{endpoint}"
    with openai.OpenAI(base_url=base_url, api_key="not-needed-offline", max_retries=0) as client:
        chunks = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": content}], stream=True
        )
        return [chunk.to_dict() for chunk in chunks]


def ask(server_url: str, endpoint: str, content: str) -> str:
    chunks = stream_chunks(server_url, endpoint, content)
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_signing_in_with_the_token_form(browser: Browser, server_url: str):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{server_url}/admin")
    expect(page.locator("#tab-log")).to_have_count(0)
    page.fill("#token", "wrong")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("not valid")
    page.fill("#token", ADMIN_TOKEN)
    page.click("button[type=submit]")
    expect(page.locator("#tab-log")).to_be_visible()
    assert page.url == f"{server_url}/admin"
    expect(page.locator("#status-upstream")).to_have_text("offline")
    expect(page.locator("#socket-state")).to_have_text("live")
    context.close()


def test_a_request_appears_in_the_live_log_within_a_second(page: Page, server_url: str):
    expect(page.locator("#socket-state")).to_have_text("live")
    ask(server_url, "chat", "Is the live log live?")
    row = page.locator("#log-rows tr", has_text="Is the live log live?")
    expect(row).to_be_visible(timeout=1000)
    expect(row.locator("td").nth(1)).to_contain_text(":")  # the instance that served it (host:pid)
    expect(row.locator("td").nth(2)).to_have_text("chat")
    expect(row.locator("td").nth(5)).to_have_text("ok")
    row.click()
    started, record = page.locator("#log-detail-body").inner_text().split("\n\n", 1)
    assert started.endswith("Z")  # a readable time above the record
    detail = json.loads(record)
    assert detail["last_user_message"] == "Is the live log live?" and detail["chunks"] > 5


def test_user_text_is_shown_as_text_never_as_html(page: Page, server_url: str):
    hostile = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"><b>bold</b>'
    ask(server_url, "chat", hostile)
    row = page.locator("#log-rows tr", has_text="window.pwned")
    expect(row).to_be_visible()
    assert row.locator("td").nth(4).inner_text() == hostile
    assert row.locator("b, img, script").count() == 0
    assert page.evaluate("window.pwned") is None


def test_filters_and_pause(page: Page, server_url: str):
    expect(page.locator("#socket-state")).to_have_text("live")
    page.select_option("#filter-endpoint", "rag")
    ask(server_url, "rag", "Filter me in")
    ask(server_url, "chat", "Filter me out")
    expect(page.locator("#log-rows tr", has_text="Filter me in")).to_be_visible()
    expect(page.locator("#log-rows tr", has_text="Filter me out")).to_have_count(0)
    page.select_option("#filter-endpoint", "")
    expect(page.locator("#log-rows tr", has_text="Filter me out")).to_be_visible()
    page.click("#pause")
    ask(server_url, "chat", "Held while paused")
    expect(page.locator("#pause")).to_have_text("Resume (1 new)")
    expect(page.locator("#log-rows tr", has_text="Held while paused")).to_have_count(0)
    page.click("#pause")
    expect(page.locator("#log-rows tr", has_text="Held while paused")).to_be_visible()


def test_adding_a_document_changes_what_the_rag_endpoint_answers(page: Page, server_url: str):
    question = "What is the wifi password for guests?"
    assert "Orange-Giraffe-42" not in ask(server_url, "rag", question)
    page.click("#tab-knowledge")
    page.click("#kb-new")
    page.fill("#kb-form [name=id]", "guest-wifi")
    page.fill("#kb-form [name=title]", "Guest wifi password")
    page.fill("#kb-form [name=content]", "The guest wifi password is Orange-Giraffe-42.")
    page.fill("#kb-form [name=tags]", "office, wifi")
    page.click("#kb-form button[type=submit]")
    expect(page.locator("#kb-rows tr[data-id=guest-wifi]")).to_be_visible()
    assert "Orange-Giraffe-42" in ask(server_url, "rag", question)

    page.fill("#kb-test [name=q]", question)
    page.click("#kb-test button[type=submit]")
    expect(page.locator("#kb-hit-rows tr").first).to_contain_text("Guest wifi password (guest-wifi#1)")
    expect(page.locator("#kb-hit-rows tr.injected").first).to_contain_text("Guest wifi password")
    expect(page.locator("#kb-test-summary")).to_contain_text("Injected: guest-wifi#1")
    # A conversation: the earlier turns, one per line, and the question last.
    page.fill("#kb-test [name=q]", "What is the wifi password for guests?\nIt is Orange-Giraffe-42.\nand for staff?")
    page.click("#kb-test button[type=submit]")
    expect(page.locator("#kb-test-summary")).to_contain_text("weighted with")
    page.click("#kb-rows tr[data-id=guest-wifi] button:has-text('Passages')")
    expect(page.locator("#kb-passage-list li")).to_have_count(1)
    expect(page.locator("#kb-passage-list li").first).to_contain_text("guest-wifi#1")

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#kb-rows tr[data-id=guest-wifi] button:has-text('Delete')")
    expect(page.locator("#kb-rows tr[data-id=guest-wifi]")).to_have_count(0)
    assert "Orange-Giraffe-42" not in ask(server_url, "rag", question)


def test_a_conflicting_edit_is_reported_not_saved(browser: Browser, page: Page, server_url: str):
    other = browser.new_context().new_page()
    other.goto(f"{server_url}/admin?token={ADMIN_TOKEN}")
    for each in (page, other):
        each.click("#tab-knowledge")
        each.click("#kb-rows tr[data-id=shutdown] button:has-text('Edit')")
    page.fill("#kb-form [name=content]", "First operator's text.")
    page.click("#kb-form button[type=submit]")
    expect(page.locator("#kb-message")).to_contain_text("Saved")
    other.fill("#kb-form [name=content]", "Second operator's text.")
    other.click("#kb-form button[type=submit]")
    expect(other.locator("#kb-form-error")).to_contain_text("Conflict")
    other.once("dialog", lambda dialog: dialog.accept())
    other.click("#kb-reload")  # the page offers the stored version instead of overwriting it
    expect(other.locator("#kb-form [name=content]")).to_have_value("First operator's text.")
    # The first operator's text is what is stored and what the RAG endpoint now answers with.
    assert "First operator's text." in ask(server_url, "rag", "Stopping the server")
    other.reload()
    other.click("#tab-knowledge")
    other.click("#kb-rows tr[data-id=shutdown] button:has-text('Edit')")
    expect(other.locator("#kb-form [name=content]")).to_have_value("First operator's text.")
    other.context.close()


def test_uploading_a_wav_changes_what_the_audio_endpoint_streams(page: Page, server_url: str, tmp_path):
    wav = tmp_path / "welcome.wav"
    wav.write_bytes(encode(tone(1.0, 44100, channels=2, frequency=600), 44100))
    page.click("#tab-audio")
    expect(page.locator("#clip-rows tr[data-name=file]")).to_be_visible()
    page.fill("#audio-upload [name=name]", "welcome")
    page.fill("#audio-upload [name=transcript]", "Welcome to the browser test.")
    page.set_input_files("#audio-upload [name=file]", str(wav))
    page.check("#audio-upload [name=activate]")
    page.click("#audio-upload button[type=submit]")
    row = page.locator("#clip-rows tr[data-name=welcome]")
    expect(row).to_contain_text("active")
    expect(row.locator("audio")).to_have_attribute("src", "/admin/api/audio/welcome.wav")

    chunks = stream_chunks(server_url, "audio", "hi")
    assert chunks[0]["choices"][0]["delta"]["audio"]["transcript"] == "Welcome to the browser test."
    pcm = b"".join(base64.b64decode(c["choices"][0]["delta"]["audio"]["data"]) for c in chunks[1:-1])
    assert len(pcm) == 32000  # one second of 16 kHz mono PCM16

    page.click("#clip-rows tr[data-name=file] button:has-text('Activate')")
    expect(page.locator("#clip-rows tr[data-name=file]")).to_contain_text("active")
    page.fill("#audio-upload [name=name]", "../escape")
    page.fill("#audio-upload [name=transcript]", "x")
    page.set_input_files("#audio-upload [name=file]", str(wav))
    page.evaluate("document.querySelector('#audio-upload [name=name]').removeAttribute('pattern')")
    page.click("#audio-upload button[type=submit]")
    expect(page.locator("#audio-error")).to_contain_text("clip name")


# What overflows a tab's panel, as the browser laid it out: the page scrolling sideways, an element ending past the
# panel (or past the horizontal scroller it sits in), a table running past its container (under the next column),
# and a control in a table that a click at its centre would not reach.
LAYOUT_PROBLEMS = """(panelId) => {
  const panel = document.getElementById(panelId);
  const limit = panel.getBoundingClientRect().right + 0.5;
  const name = (node) => node.id ? `#${node.id}` : `${node.tagName.toLowerCase()}.${node.className || "-"}`;
  const where = (node) => { const row = node.closest("tr"); return row && (row.dataset.id || row.dataset.name); };
  const scrollsSideways = (node) => ["auto", "scroll"].includes(getComputedStyle(node).overflowX);
  const rendered = (node) => node.getClientRects().length > 0;
  const problems = [];
  const page = document.documentElement;
  if (page.scrollWidth > page.clientWidth) problems.push(`the page is ${page.scrollWidth} px wide`);
  for (const node of panel.querySelectorAll("*")) {
    if (!rendered(node)) continue;
    let right = node.getBoundingClientRect().right;
    for (let up = node.parentElement; up !== panel; up = up.parentElement) {
      if (scrollsSideways(up)) right = Math.min(right, up.getBoundingClientRect().right);
    }
    if (right > limit) problems.push(`${name(node)} ends at ${Math.round(right)} px, past the panel`);
  }
  for (const table of panel.querySelectorAll("table")) {
    const container = table.parentElement;
    if (!rendered(table) || scrollsSideways(container)) continue;
    const over = table.getBoundingClientRect().right - container.getBoundingClientRect().right;
    if (over > 0.5) problems.push(`${name(table)} runs ${Math.round(over)} px past ${name(container)}`);
  }
  for (const control of panel.querySelectorAll("table button, table input, table summary, table audio")) {
    if (!rendered(control)) continue;
    control.scrollIntoView({ block: "center", inline: "nearest" });
    const box = control.getBoundingClientRect();
    const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
    if (!hit || !control.contains(hit)) {
      const what = control.textContent || name(control);
      problems.push(`${what} of ${where(control)} is under ${hit ? name(hit) : "nothing"}`);
    }
  }
  window.scrollTo(0, 0);
  return problems;
}"""


def assert_fits(page: Page, panel: str) -> None:
    assert page.evaluate(LAYOUT_PROBLEMS, panel) == [], panel


@pytest.mark.parametrize("width", [1024, 1280, 1920])
def test_every_tab_fits_its_panel(browser: Browser, server_url: str, width: int):
    context = browser.new_context(viewport={"width": width, "height": 800})
    page = context.new_page()
    page.goto(f"{server_url}/admin?token={ADMIN_TOKEN}")
    expect(page.locator("#socket-state")).to_have_text("live")
    question = f"How do I connect this server to Agora? ({width} px)"
    ask(server_url, "rag", question)
    ask(server_url, "chat", f"Tell me the time in Paris ({width} px)")  # a tool call in the log
    stream_chunks(server_url, "audio", "Play the greeting")
    page.locator("#log-rows tr", has_text=question).click()  # its record beside the table
    expect(page.locator("#log-detail")).to_be_visible()
    assert_fits(page, "panel-log")

    page.click("#tab-knowledge")
    page.click("#kb-rows tr[data-id=connect-agora] button:has-text('Passages')")
    expect(page.locator("#kb-passage-list li").first).to_contain_text("connect-agora#1")
    page.click("#kb-rows tr[data-id=connect-agora] button:has-text('Edit')")
    expect(page.locator("#kb-form [name=content]")).to_be_focused()  # typing elsewhere before would land there
    page.fill("#kb-test [name=q]", "How do I connect this server to Agora?")
    page.click("#kb-test button[type=submit]")
    expect(page.locator("#kb-hit-rows tr.injected").first).to_contain_text("connect-agora#1")
    expect(page.locator("#kb-hit-rows tr", has_text="relevance below").first).to_be_visible()
    assert_fits(page, "panel-knowledge")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"knowledge-{width}.png"), full_page=True)

    page.click("#tab-audio")
    expect(page.locator("#clip-rows tr[data-name=file]")).to_be_visible()
    assert_fits(page, "panel-audio")

    page.click("#tab-tools")
    page.select_option("#tool-try-name", "current_time")
    page.fill("#tool-try [name=arguments]", '{"timezone": "Asia/Tokyo"}')
    page.click("#tool-try button[type=submit]")
    expect(page.locator("#tool-try-result")).to_contain_text("Asia/Tokyo")
    assert_fits(page, "panel-tools")

    page.click("#tab-history")
    page.locator("#history-rows tr", has_text=question).click()
    expect(page.locator("#history-detail-body [data-part=timings]")).to_be_visible()
    assert_fits(page, "panel-history")
    context.close()


def test_dashboard_screenshot(page: Page, server_url: str):
    questions = (
        "How do I connect this server to Agora?",
        "How does the waiting message work?",
        "What is offline mode?",
    )
    for _ in range(8):
        for question in questions:
            ask(server_url, "rag", question)
        stream_chunks(server_url, "audio", "Play the greeting")
    ask(server_url, "chat", "Hello, who are you?")
    expect(page.locator("#log-rows tr", has_text="Hello, who are you?")).to_be_visible()
    expect(page.locator("#status-ok")).not_to_have_text("0", timeout=5000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=False)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


def test_the_page_reconnects_when_the_server_comes_back(browser: Browser, tmp_path):
    context = browser.new_context()
    page = context.new_page()
    with server_process(tmp_path) as url:
        page.goto(f"{url}/admin?token={ADMIN_TOKEN}")
        expect(page.locator("#socket-state")).to_have_text("live")
        ask(url, "chat", "Before the restart")
        expect(page.locator("#log-rows tr", has_text="Before the restart")).to_be_visible()
        page.click("#pause")
        expect(page.locator("#socket-state")).to_have_text("paused")
    expect(page.locator("#socket-state")).to_have_text("reconnecting…")
    port = int(url.rsplit(":", 1)[1])
    with server_process(tmp_path, port) as url:  # the same address, as after a restart
        expect(page.locator("#socket-state")).to_have_text("paused", timeout=15_000)
        expect(page.locator("#log-rows tr", has_text="Before the restart")).to_be_visible()  # the table is kept
        ask(url, "chat", "After the restart")
        expect(page.locator("#pause")).to_have_text("Resume (1 new)")
        page.click("#pause")
        expect(page.locator("#log-rows tr", has_text="After the restart")).to_be_visible()
    context.close()


def test_the_tools_tab_lists_tries_and_disables_tools_and_the_log_shows_calls(page: Page, server_url: str):
    page.click("#tab-tools")
    expect(page.locator("#tool-rows tr[data-name=current_time]")).to_contain_text("builtin")
    expect(page.locator("#tool-rows tr[data-name=search_knowledge_base]")).to_be_visible()
    expect(page.locator("#tool-source-rows")).to_contain_text("reachable")
    page.select_option("#tool-try-name", "current_time")
    page.fill("#tool-try [name=arguments]", '{"timezone": "Tokyo"}')
    page.click("#tool-try button[type=submit]")
    expect(page.locator("#tool-try-result")).to_contain_text("Asia/Tokyo")
    page.fill("#tool-try [name=arguments]", '{"timezone": 9}')
    page.click("#tool-try button[type=submit]")
    expect(page.locator("#tool-try-summary")).to_contain_text("Failed")
    expect(page.locator("#tool-try-result")).to_contain_text("is not of type 'string'")
    # The offline responder calls the built-in tool; the live log shows the call under its request.
    answer = ask(server_url, "chat", "What time is it in Tokyo?")
    assert "Asia/Tokyo" in answer
    page.click("#tab-log")
    expect(page.locator("#log-rows tr", has_text="What time is it in Tokyo?")).to_contain_text("tools: current_time ✓")
    page.click("#tab-tools")
    page.uncheck("#tool-rows tr[data-name=current_time] input[type=checkbox]")
    expect(page.locator("#tools-message")).to_contain_text("no longer offered")
    assert "Asia/Tokyo" not in ask(server_url, "chat", "What time is it in Tokyo?")
    page.check("#tool-rows tr[data-name=current_time] input[type=checkbox]")
    expect(page.locator("#tools-message")).to_contain_text("is offered")


def test_the_history_tab_pages_filters_and_opens_a_request(page: Page, server_url: str):
    for n in range(3):
        ask(server_url, "rag", f"History question {n}: how do I connect Agora?")
    ask(server_url, "chat", "A chat turn for the history")
    page.click("#tab-history")
    expect(page.locator("#history-rows tr", has_text="History question 2")).to_be_visible()
    expect(page.locator("#history-rows tr", has_text="A chat turn for the history")).to_be_visible()
    page.select_option("#history-filters [name=endpoint]", "rag")
    page.fill("#history-filters [name=q]", "history question")
    page.click("#history-filters button[type=submit]")
    expect(page.locator("#history-rows tr")).to_have_count(3)
    expect(page.locator("#history-rows tr", has_text="A chat turn for the history")).to_have_count(0)
    page.fill("#history-filters [name=since]", "2000-01-01T00:00:00")
    page.fill("#history-filters [name=until]", "2001-01-01T00:00:00")
    page.click("#history-filters button[type=submit]")
    expect(page.locator("#history-rows tr")).to_have_text("No requests in the history match these filters.")
    page.fill("#history-filters [name=since]", "")
    page.fill("#history-filters [name=until]", "")
    page.click("#history-filters button[type=submit]")
    page.locator("#history-rows tr", has_text="History question 1").click()
    detail = page.locator("#history-detail-body")
    expect(detail).to_contain_text("History question 1: how do I connect Agora?")  # the messages as logged
    expect(detail.locator("[data-part=injected-knowledge]")).to_contain_text("connect-agora#")
    expect(detail.locator("[data-part=reply]")).to_contain_text("From the knowledge base")
    expect(detail.locator("[data-part=timings]")).to_contain_text("First chunk")
    page.screenshot(path=str(ARTIFACTS / "history.png"))


def post_chat(server_url: str, messages: list[dict], request_id: str) -> int:
    """A non-streamed chat request with our own request id (the history finds it by it); returns the status."""
    body = json.dumps({"model": "gpt-4o-mini", "messages": messages}).encode()
    request = urllib.request.Request(
        f"{server_url}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", "X-Request-Id": request_id},
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status
    except urllib.error.HTTPError as error:
        error.close()
        return error.code


def open_in_history(page: Page, request_id: str) -> Locator:
    """Finds the request in the History tab by its id, opens it; returns its messages part."""
    page.click("#tab-history")
    page.fill("#history-filters [name=q]", request_id)
    page.click("#history-filters button[type=submit]")
    expect(page.locator("#history-rows tr")).to_have_count(1)
    page.locator("#history-rows tr").click()
    expect(page.locator("#history-detail-title")).to_be_visible()
    return page.locator("#history-detail-body [data-part=messages]")


def test_a_request_without_messages_is_not_said_to_be_unlogged(page: Page, server_url: str):
    assert post_chat(server_url, [], "req_no_messages") == 400
    messages = open_in_history(page, "req_no_messages")
    expect(messages).to_contain_text("No messages")
    expect(messages).not_to_contain_text("LOG_USER_TEXT")  # the server logs text (truncated, by default)
    expect(page.locator("#history-detail-body [data-part=reply]")).to_have_text("ReplyNo text.")


def test_with_log_user_text_none_the_history_says_why_the_messages_are_missing(browser: Browser, tmp_path):
    context = browser.new_context()
    page = context.new_page()
    with server_process(tmp_path, settings={"LOG_USER_TEXT": "none"}) as url:
        page.goto(f"{url}/admin?token={ADMIN_TOKEN}")
        question = [{"role": "user", "content": "A question the log must not keep"}]
        assert post_chat(url, question, "req_text_unlogged") == 200
        messages = open_in_history(page, "req_text_unlogged")
        expect(messages).to_contain_text("Not logged (LOG_USER_TEXT was none")
        expect(page.locator("#history-detail-body [data-part=reply]")).to_contain_text("LOG_USER_TEXT was none")
        expect(page.locator("#history-detail-body")).not_to_contain_text("A question the log must not keep")
    context.close()


def test_the_header_shows_each_upstreams_health_and_the_history_which_one_answered(browser: Browser, tmp_path):
    """Two upstreams, the first refusing connections: after one request it is skipped (UPSTREAM_SKIP_AFTER=1), the
    header says so, and the History tab shows that the second answered after the first failed."""
    with contextlib.closing(socket.socket()) as refusing, processes.fake_upstream(words=5) as port:
        refusing.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        upstreams = tmp_path / "upstreams.json"
        upstreams.write_text(json.dumps({"upstreams": [
            {"name": "primary", "base_url": f"http://127.0.0.1:{refusing.getsockname()[1]}/v1", "api_key": "sk-a"},
            {"name": "backup", "base_url": f"http://127.0.0.1:{port}/v1", "api_key": "sk-b"},
        ]}))  # fmt: skip
        settings = {"UPSTREAMS_FILE": str(upstreams), "UPSTREAM_SKIP_AFTER": "1", "HEDGE_AFTER_MS": "auto"}
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        with server_process(tmp_path, settings=settings) as url:
            page.goto(f"{url}/admin?token={ADMIN_TOKEN}")
            expect(page.locator("#status-upstream-label")).to_have_text("Upstreams")
            expect(page.locator("#status-upstream [data-upstream=primary]")).to_have_text("primary · healthy")
            question = [{"role": "user", "content": "Which upstream answers?"}]
            assert post_chat(url, question, "req_routed") == 200
            primary = page.locator("#status-upstream [data-upstream=primary]")
            expect(primary).to_contain_text("primary · skipped")
            expect(primary).to_have_class("upstream error")
            expect(page.locator("#status-upstream [data-upstream=backup]")).to_have_text("backup · healthy")
            expect(page.locator("#status-upstream .hedging")).to_have_text("hedging auto")
            page.screenshot(path=str(ARTIFACTS / "upstreams.png"))
            open_in_history(page, "req_routed")
            timings = page.locator("#history-detail-body")
            expect(timings).to_contain_text("backup")
            expect(timings).to_contain_text("primary failed (upstream_unreachable)")
        context.close()


def test_a_voice_request_shows_its_first_sentence_and_platform(page: Page, server_url: str):
    expect(page.locator("#socket-state")).to_have_text("live")
    with openai.OpenAI(base_url=f"{server_url}/v1", api_key="not-needed-offline", max_retries=0) as client:
        chunks = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "A voice caller asks a question."}],
            stream=True,
            extra_body={"turn_id": 7, "context": {"appId": "app", "userId": "7", "channel": "voice"}},
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    row = page.locator("#log-rows tr", has_text="A voice caller asks a question.")
    expect(row).to_be_visible()
    expect(row.locator("td").nth(7)).to_have_text(re.compile(r"\d+(\.\d+)? ms"))  # the first sentence
    page.click("#tab-history")
    page.fill("#history-filters [name=q]", "A voice caller asks")
    page.click("#history-filters button[type=submit]")
    expect(page.locator("#history-rows tr")).to_have_count(1)
    page.locator("#history-rows tr").click()
    expect(page.locator("#history-detail-body")).to_contain_text("agora (speakable text)")
