"""Speakable text on its own: markdown as a TTS engine should read it, the same however the stream is cut, holding
back only a few characters, and never touching anything but content; and the first sentence's clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmserver.request_log import RequestLog
from llmserver.turn.speech import SpeakableChoices, SpeakableText, SpokenAnswer, spoken_email, spoken_url
from tests.sinks import RecordingSink

CASES = [
    ("## Getting started\nHere is **how** to *connect*.", "Getting started\nHere is how to connect."),
    ("- first\n- second\n* third\n+ fourth", "first\nsecond\nthird\nfourth"),
    ("1. Open it.\n2. Close it.", "1. Open it.\n2. Close it."),  # numbers carry the order: kept
    ("Open the [console](https://console.agora.io/projects) now.", "Open the console now."),
    ("![the logo](https://x.io/logo.png) Hello.", "the logo Hello."),
    ("See https://docs.agora.io/en/overview?x=1#top now.", "See docs dot agora dot io slash en slash overview now."),
    ("Visit www.agora.io.", "Visit agora dot io."),
    ("Mail support@agora.io, please.", "Mail support at agora dot io, please."),
    ("Call `join()` with __the__ `App ID`.", "Call join() with the App ID."),
    ("snake_case and ~~old~~ new", "snake_case and old new"),
    ("> Note: quoted.\n---\nAfter the rule.", "Note: quoted.\n\nAfter the rule."),  # the rule: a pause
    ("| Plan | Price |\n|---|---|\n| Pro | $20 |", " Plan , Price \n\n Pro , $20 "),
    ("```python\nprint('hi')\n```\nDone.", "\nprint('hi')\n\nDone."),
    ("**你好**，我是*助手*。请看 https://www.sw.cn/docs 了解。", "你好，我是助手。请看 sw dot cn slash docs 了解。"),
    ("Plain text, 5 > 3 and a < b; 100% sure!", "Plain text, 5 > 3 and a < b; 100% sure!"),
    ("Line one<br>line two.", "Line one line two."),  # a break: a pause, never words run together
    ("Press <Enter> or <b>this</b>, `List<String>`, x<y.", "Press <Enter> or this, List<String>, x<y."),
    ("Mail <support@agora.io> or **support@agora.io**.", "Mail support at agora dot io or support at agora dot io."),
    ("$5*2 = $10, 2 * 3 = 6, *stress*.", "$5 times 2 = $10, 2 times 3 = 6, stress."),
    ("See **https://docs.agora.io/en**.", "See docs dot agora dot io slash en."),
    ("注册后（详见 https://x.io/?lang=zh）即可获取App ID。", "注册后（详见 x dot io）即可获取App ID。"),
    ("访问https://x.io，然后点击。请发邮件到hi@agora.io。", "访问x dot io，然后点击。请发邮件到hi at agora dot io。"),
    ("- - -\nNext", "\nNext"),
    ("| a | b |\n|-|-|\n| 1 | 2 |", " a , b \n\n 1 , 2 "),
    ("a | b\n--- | ---\n1 | 2", "a , b\n\n1 , 2"),
]  # fmt: skip


def spoken(text: str, size: int) -> str:
    transform = SpeakableText()
    said = [transform.feed(text[i : i + size]) for i in range(0, len(text), size)]
    return "".join(said) + transform.finish()


@pytest.mark.parametrize("markdown, expected", CASES)
@pytest.mark.parametrize("size", [1, 3, 1000])
def test_markdown_is_read_as_a_person_would_say_it_however_it_is_cut(markdown, expected, size):
    assert spoken(markdown, size) == expected


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([markdown for markdown, _ in CASES]), st.lists(st.integers(1, 12), min_size=1, max_size=40))
def test_any_cut_of_the_stream_says_the_same(markdown, sizes):
    transform, said, start = SpeakableText(), [], 0
    for size in sizes * (len(markdown) // max(1, sum(sizes)) + 1):
        if start >= len(markdown):
            break
        said.append(transform.feed(markdown[start : start + size]))
        start += size
    said.append(transform.feed(markdown[start:]))
    assert "".join(said) + transform.finish() == spoken(markdown, len(markdown) or 1)


def test_only_a_few_characters_are_held_back_but_for_a_url_until_it_ends():
    text = "**Bold** and _soft_ words, `code`, a [link](https://x.io/a) and\n# a heading\n- a bullet " * 5
    transform = SpeakableText()
    most = 0
    for character in text:
        transform.feed(character)
        most = max(most, len(transform._held))
    assert most <= 8  # "https://" before it is known to be a URL
    transform.feed("see https://docs.agora.io/a/long/path")
    assert transform._held.startswith("https://")  # held until the URL ends
    assert transform.feed(" now") == "docs dot agora dot io slash a slash long slash path now"


def test_urls_and_addresses_become_words():
    assert spoken_url("https://user:pw@docs.agora.io:443/en/guide/") == "docs dot agora dot io slash en slash guide"
    assert spoken_email("hello@mail.example.com") == "hello at mail dot example dot com"


def test_only_content_is_touched():
    choices = SpeakableChoices()
    call = {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": '{"q": "**x**"}'}}]}
    chunk = {"id": "x", "choices": [{"index": 0, "delta": call, "finish_reason": None}]}
    assert choices.chunk(chunk) is chunk
    audio = {"id": "x", "choices": [{"index": 0, "delta": {"audio": {"transcript": "**hi**"}}, "finish_reason": None}]}
    assert choices.chunk(audio) is audio
    usage = {"id": "x", "choices": [], "usage": {"prompt_tokens": 3}}
    assert choices.chunk(usage) is usage
    plain = {"id": "x", "choices": [{"index": 0, "delta": {"content": "plain words "}, "finish_reason": None}]}
    assert choices.chunk(plain) is plain  # nothing to change: the upstream's own bytes go on


@pytest.mark.gen_test
async def test_held_text_is_said_before_the_finish_and_the_first_sentence_is_timed():
    sink, record = RecordingSink(), RequestLog().begin("req", "chat")
    answer = SpokenAnswer(sink, record, speakable=True)

    def chunk(content=None, finish=None):
        delta = {} if content is None else {"content": content}
        return {"id": "x", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    await answer.send_chunk(chunk("It is **nine**."))
    assert record.first_sentence_ms is None  # "nine." is not over until what follows shows it is (not "nine.5")
    await answer.send_chunk(chunk(" Then see www"))
    assert record.first_sentence_ms is not None
    await answer.send_chunk(chunk(".x.io"))
    await answer.send_chunk(chunk(None, "stop"))
    await answer.done()
    assert sink.text == "It is nine. Then see x dot io" and sink.events[-1] == "[DONE]"
    assert record.first_sentence_ms is not None and sink.chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.gen_test
async def test_an_answer_of_one_sentence_without_a_stop_is_timed_at_its_end():
    sink, record = RecordingSink(), RequestLog().begin("req", "chat")
    answer = SpokenAnswer(sink, record, speakable=False)
    await answer.send_chunk({"id": "x", "choices": [{"index": 0, "delta": {"content": "Yes"}, "finish_reason": None}]})
    assert record.first_sentence_ms is None
    await answer.send_chunk({"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    assert record.first_sentence_ms is not None


MARKDOWNISH = st.text(alphabet=st.sampled_from(list("ab #*_-+>`|[]()!<>@.:/\nhtpsw你好。 15~$")), max_size=120)


@settings(max_examples=500, deadline=None)
@given(MARKDOWNISH, st.lists(st.integers(1, 9), min_size=1, max_size=30))
def test_any_text_cut_anywhere_says_the_same_as_whole_and_never_fails(text, sizes):
    transform, said, start = SpeakableText(), [], 0
    for size in sizes:
        said.append(transform.feed(text[start : start + size]))
        start += size
    said.append(transform.feed(text[start:]))
    assert "".join(said) + transform.finish() == spoken(text, max(1, len(text)))


@pytest.mark.gen_test
async def test_a_run_on_text_is_a_sentence_once_it_is_as_long_as_a_tts_engine_would_cut_it():
    sink, record = RecordingSink(), RequestLog().begin("req", "chat")
    answer = SpokenAnswer(sink, record, speakable=False)
    words = {"id": "x", "choices": [{"index": 0, "delta": {"content": "word " * 20}, "finish_reason": None}]}
    for _ in range(2):
        await answer.send_chunk(words)
    assert record.first_sentence_ms is None  # 200 characters, no stop
    await answer.send_chunk(words)
    assert record.first_sentence_ms is not None  # 300
