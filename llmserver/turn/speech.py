"""Speakable text: the answer's content as a text-to-speech engine should read it, transformed as it streams.

Models write markdown; Agora's engine (unlike Pipecat, LiveKit or Vapi) sends the text to its TTS as it comes, and the
caller hears "asterisk asterisk" and "h t t p s colon slash slash". The transform removes emphasis, headings, bullets,
quote marks, table rules and code marks, turns a link into its text, and URLs and e-mail addresses into words a
person would say ("docs dot agora dot io slash en", "support at agora dot io"). Numbered lists keep their numbers,
code keeps its words, CJK text is untouched but for markup.

It works on the stream: each piece of content is transformed as it arrives, holding back only what the next
characters decide (a marker split across chunks, the start of a line, 12 characters after a `<`), but a URL or an
address until it ends (MAX_HOLD at most). Only `delta.content` is touched: never tool calls, audio or anything else.
"""

from __future__ import annotations

import re
from typing import Any

MAX_HOLD = 512  # a URL longer than this is said as far as this, the rest left unsaid
_SCHEMES = ("https://", "http://", "www.")
# Where a URL or an address ends: a space, a quote or bracket, a markdown mark, or any character that is not ASCII
# (Chinese text and its full-width punctuation follow a URL without a space).
_URL_END = re.compile(r"[\s<>\"'`|\]*~]|[^\x00-\x7f]")
_TRAILING = ".,;:!?)"
_RULE = re.compile(r"^[ \t]*([-*_])([ \t]*\1){2,}[ \t]*$")
_TABLE_RULE = re.compile(r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_TABLE_RULE_START = re.compile(r"^[ \t]*:?-+:?[ \t]*(\|[ \t:-]*)*$")  # "--- | ---" may still become a rule
# The HTML a model writes in markdown: tags that say nothing (<br> and block tags end a phrase: a space). Anything
# else in angle brackets (<Enter>, <token>, List<String>) is text.
_HTML_TAG = re.compile(
    r"</?(a|abbr|b|big|blockquote|br|center|code|del|div|em|font|h[1-6]|hr|i|img|ins|kbd|li|mark|ol|p|pre|s|small|"
    r"span|strike|strong|sub|sup|table|tbody|td|th|thead|tr|u|ul)(\s[^<>]*)?/?>",
    re.IGNORECASE,
)
_PHRASE_TAGS = frozenset("br p div li tr td th h1 h2 h3 h4 h5 h6 hr blockquote table ul ol".split())
_DOMAIN = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_RULE_START = re.compile(r"^[ \t]*([-*_])([ \t]*\1)*[ \t]*$")  # "- -" may still become "- - -"
_LONGEST_TAG = 12  # "<blockquote " and the like: what '<' waits for before it is text
_TAG_START = re.compile(r"/?[A-Za-z][A-Za-z0-9]*(\s[^<>]*)?|/")
_LINK_START = re.compile(r"https?://[^\s<>]*|[A-Za-z0-9._%+-]{1,64}(@[A-Za-z0-9.-]*)?")


def _ascii_alnum(character: str) -> bool:
    return character.isascii() and character.isalnum()


def spoken_host(host: str) -> str:
    host = host.removeprefix("www.")
    return " dot ".join(part for part in host.split(".") if part)


def spoken_url(url: str) -> str:
    """`https://docs.agora.io/en/overview?x=1` → "docs dot agora dot io slash en slash overview"."""
    rest = url.split("://", 1)[1] if "://" in url else url
    rest = re.split(r"[?#]", rest, maxsplit=1)[0]
    host, _, path = rest.partition("/")
    host = host.rsplit("@", 1)[-1].split(":", 1)[0]
    parts = [spoken_host(host), *(segment for segment in path.split("/") if segment)]
    return " slash ".join(part for part in parts if part)


def spoken_email(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local} at {spoken_host(domain)}"


class SpeakableText:
    """One choice's content, transformed as it streams: feed() each piece, finish() at the end."""

    def __init__(self) -> None:
        self._held = ""
        self._line_start = True
        self._in_fence = False
        self._table_row = False
        self._link_url = 0  # inside a link's (url): the open parentheses
        self._in_code = False  # inside `inline code`: its characters said as they are
        self._skipping_url = False  # the rest of a URL longer than MAX_HOLD
        self._last = ""  # the last character given out, for word boundaries
        self._last_visible = ""  # the last character given out that is not a space (a number before " * 3")

    def feed(self, text: str) -> str:
        return self._run(self._held + text, final=False)

    def finish(self) -> str:
        return self._run(self._held, final=True)

    # The scanner: `text` from position `i`; returns what is given out, keeps in _held what waits for more. ------

    def _run(self, text: str, final: bool) -> str:
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            step = self._step(text, i, final, out)
            if step is None:  # the next characters decide: wait for them
                break
            i = step
        self._held = text[i:]
        said = "".join(out)
        if said:
            self._last = said[-1]
        return said

    def _emit(self, out: list[str], text: str) -> None:
        if text:
            out.append(text)
            self._last = text[-1]
            visible = text.rstrip()
            if visible:
                self._last_visible = visible[-1]

    def _step(self, text: str, i: int, final: bool, out: list[str]) -> int | None:
        """Handles the construct at `text[i]`; returns where the next one starts, or None to wait for more."""
        c = text[i]
        if self._link_url:
            return self._skip_link_url(text, i)
        if self._skipping_url:
            end = _URL_END.search(text, i)
            if end is None:
                return len(text)
            self._skipping_url = False
            return end.start()
        if c == "\n":
            self._emit(out, "\n")
            self._line_start, self._table_row, self._in_code = True, False, False
            return i + 1
        if self._line_start:
            return self._line_beginning(text, i, final, out)
        if self._in_fence:  # code: its words, as they are
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            self._emit(out, text[i:end])
            return end
        return self._inline(text, i, final, out)

    def _line_beginning(self, text: str, i: int, final: bool, out: list[str]) -> int | None:
        line_end = text.find("\n", i)
        line = text[i:] if line_end < 0 else text[i:line_end]
        complete = line_end >= 0 or final
        stripped = line.lstrip(" \t")
        if not stripped:
            if complete:
                return i + len(line)  # a line of blanks: nothing to say
            return None
        start = i + len(line) - len(stripped)
        first = stripped[0]
        if not complete and len(stripped) < 3 and ("```".startswith(stripped) or "~~~".startswith(stripped)):
            return None  # may open (or close) a block of code
        if stripped.startswith("```") or stripped.startswith("~~~"):
            if not complete:
                return None  # the fence's line (its language) is dropped whole
            self._in_fence = not self._in_fence
            return i + len(line)
        if self._in_fence:
            self._line_start = False
            return start
        if first in "-*_" and ((not complete and (len(stripped) < 3 or _RULE_START.match(line))) or _RULE.match(line)):
            if not complete:
                return None  # could be a rule (---, - - -), a bullet or emphasis: the next characters say
            return i + len(line)  # a horizontal rule
        if first in "-:" and "|" in line:  # the rule under a table's head, written without its outer pipes
            if not complete and _TABLE_RULE_START.match(line):
                return None
            if complete and _TABLE_RULE.match(line):
                return i + len(line)
        if first == "|":
            cell = stripped[1:].lstrip(" \t")
            if not complete and (not cell or cell[0] in "-:"):
                return None  # a rule under the table's head (|---|---|), or a row: its first cell says
            if _TABLE_RULE.match(line):
                return i + len(line)
            self._table_row = True
            self._line_start = False
            return start + 1  # the leading pipe; the others become pauses (inline)
        if first == "#":
            marks = len(stripped) - len(stripped.lstrip("#"))
            if marks == len(stripped) and not complete:
                return None
            if marks <= 6 and stripped[marks : marks + 1] in (" ", ""):
                self._line_start = False
                return start + marks + (1 if stripped[marks : marks + 1] == " " else 0)
        elif first in "-*+":
            if len(stripped) < 2 and not complete:
                return None
            if stripped[1:2] == " ":  # a bullet
                self._line_start = False
                return start + 2
        elif first == ">":
            if len(stripped) < 2 and not complete:
                return None
            self._line_start = False
            return start + (2 if stripped[1:2] == " " else 1)
        self._line_start = False
        return start

    def _skip_link_url(self, text: str, i: int) -> int:
        """Inside a link's (url): nothing is said until its closing parenthesis."""
        for j in range(i, len(text)):
            c = text[j]
            if c == "(":
                self._link_url += 1
            elif c == ")":
                self._link_url -= 1
                if not self._link_url:
                    return j + 1
            elif c == "\n":
                self._link_url = 0  # not a link after all: whatever follows is said
                return j
        return len(text)

    def _inline(self, text: str, i: int, final: bool, out: list[str]) -> int | None:
        c = text[i]
        n = len(text)
        if c == "`":
            j = i
            while j < n and text[j] == "`":
                j += 1
            self._in_code = not self._in_code  # the marks go; the code's characters are said as they are
            return j
        if self._in_code:
            j = i
            while j < n and text[j] not in "`\n":
                j += 1
            return self._say(out, text[i:j], i)
        if c == "*":
            return self._star(text, i, final, out)
        if c == "~":
            if i + 1 >= n and not final:
                return None
            return i + 2 if text[i + 1 : i + 2] == "~" else self._say(out, c, i)
        if c == "_":
            j = i
            while j < n and text[j] == "_":
                j += 1
            if j >= n and not final:
                return None
            inside_a_word = self._last.isalnum() and text[j : j + 1].isalnum()
            return self._say(out, text[i:j], i) if inside_a_word else j
        if c == "[":
            return i + 1
        if c == "]":
            if i + 1 >= n and not final:
                return None
            if text[i + 1 : i + 2] == "(":
                self._link_url = 1
                return i + 2
            return i + 1
        if c == "!":
            if i + 1 >= n and not final:
                return None
            return i + 1 if text[i + 1 : i + 2] == "[" else self._say(out, c, i)
        if c == "|":
            j = i + 1
            while j < n and text[j] in " \t":
                j += 1
            if j >= n and not final:
                return None
            if self._table_row and (j >= n or text[j] == "\n"):
                return j  # the row's closing pipe
            self._emit(out, ",")  # between cells: a pause
            return i + 1
        if c == "<":
            return self._angle(text, i, final, out)
        if c == "@":
            return self._email(text, i, final, out)
        if not _ascii_alnum(self._last) and c in "hHwW":
            return self._maybe_url(text, i, final, out)
        # Plain text: up to the next character that may start something.
        j = i + 1
        while j < n and text[j] not in "\n*`~_[]!|<@hHwW":
            j += 1
        return self._say(out, text[i:j], i)

    def _star(self, text: str, i: int, final: bool, out: list[str]) -> int | None:
        """Emphasis marks go; a lone `*` between numbers ("5*2", "2 * 3") is a multiplication: "times"."""
        j = i
        while j < len(text) and text[j] == "*":
            j += 1
        if j - i > 1 or not self._last_visible.isdigit() or self._last not in " 0123456789":
            return j
        k = j + 1 if text[j : j + 1] == " " else j
        if k >= len(text) and not final:
            return None
        if not text[k : k + 1].isdigit():
            return j
        self._emit(out, ("" if self._last == " " else " ") + "times" + ("" if k > j else " "))
        return j

    def _say(self, out: list[str], text: str, i: int) -> int:
        self._emit(out, text)
        return i + len(text)

    def _angle(self, text: str, i: int, final: bool, out: list[str]) -> int | None:
        """<https://…> and <name@example.com> as words, an HTML tag as nothing (or a pause), anything else as it is."""
        end = text.find(">", i + 1)
        if end < 0:
            rest = text[i + 1 :]
            if not rest:
                return None if not final else self._say(out, "<", i)
            may_be_tag = len(rest) < _LONGEST_TAG and _TAG_START.fullmatch(rest) is not None
            may_be_link = len(rest) < MAX_HOLD and _LINK_START.fullmatch(rest) is not None
            if not final and (may_be_tag or may_be_link):
                return None  # the '>' decides
            return self._say(out, "<", i)
        inner = text[i + 1 : end]
        if inner.startswith(("http://", "https://")) and not _URL_END.search(inner):
            self._emit(out, spoken_url(inner))
            return end + 1
        local, at, domain = inner.partition("@")
        if at and local and _DOMAIN.fullmatch(domain) and not _URL_END.search(inner):
            self._emit(out, spoken_email(inner))
            return end + 1
        tag = _HTML_TAG.fullmatch(text[i : end + 1])
        if tag:
            if tag.group(1).lower() in _PHRASE_TAGS and self._last not in ("", " ", "\n"):
                self._emit(out, " ")
            return end + 1
        return self._say(out, "<", i)

    def _email(self, text: str, i: int, final: bool, out: list[str]) -> int | None:
        """`@` after a word: an e-mail address ("name at example dot com") once its domain is whole."""
        match = _URL_END.search(text, i + 1)
        if match is None and not final and len(text) - i < MAX_HOLD:
            return None
        end = match.start() if match else len(text)
        word = text[i + 1 : end].rstrip(_TRAILING)
        if _ascii_alnum(self._last) and _DOMAIN.fullmatch(word):
            self._emit(out, " at " + spoken_host(word))
            return i + 1 + len(word)
        return self._say(out, "@", i)

    def _maybe_url(self, text: str, i: int, final: bool, out: list[str]) -> int | None:
        rest = text[i : i + 8].lower()
        candidates = [scheme for scheme in _SCHEMES if scheme.startswith(rest) or rest.startswith(scheme)]
        if not candidates:
            return self._say(out, text[i], i)
        if not any(rest.startswith(scheme) for scheme in candidates):
            if final or len(text) - i >= 8:
                return self._say(out, text[i], i)
            return None  # "ht" may become "https://"
        match = _URL_END.search(text, i)
        if match is None and not final and len(text) - i < MAX_HOLD:
            return None  # the URL until its end
        end = match.start() if match else len(text)
        if end - i >= MAX_HOLD:  # too long to hold: said as far as this, the rest (its query, surely) not
            self._emit(out, spoken_url(text[i : i + MAX_HOLD]))
            self._skipping_url = end >= len(text) and not final
            return end
        url = text[i:end]
        kept = url.rstrip(_TRAILING)
        if kept.count("(") < kept.count(")"):
            kept = kept[: kept.rfind(")")]
        scheme = next(scheme for scheme in _SCHEMES if rest.startswith(scheme))
        if len(kept) <= len(scheme):  # "https://" and nothing after it
            return self._say(out, text[i], i)
        self._emit(out, spoken_url(kept))
        return i + len(kept)


class SpeakableChoices:
    """The transform for each choice of an answer (`n` above 1 streams several), on whole chunks: a chunk's
    `delta.content` is replaced by its speakable text; a chunk left with nothing to say and nothing else is dropped;
    what is held back is said before the choice's finish."""

    def __init__(self) -> None:
        self._texts: dict[int, SpeakableText] = {}

    def chunk(self, data: dict[str, Any]) -> dict[str, Any] | None:
        choices = data.get("choices")
        if not choices:
            return data
        spoken = [self._choice(choice) for choice in choices]
        if all(new is old for new, old in zip(spoken, choices, strict=True)):
            return data  # nothing to change: relayed as the upstream wrote it
        kept = [choice for choice in spoken if choice is not None]
        if not kept:
            return None
        return {**data, "choices": kept}

    def _choice(self, choice: Any) -> dict[str, Any] | None:
        if not isinstance(choice, dict):
            return choice
        delta = choice.get("delta")
        index = choice.get("index", 0) if isinstance(choice.get("index", 0), int) else 0
        transform = self._texts.get(index)
        content = delta.get("content") if isinstance(delta, dict) else None
        said = None
        if isinstance(content, str):
            if transform is None:
                transform = self._texts[index] = SpeakableText()
            said = transform.feed(content)
        if choice.get("finish_reason") and transform is not None:
            said = (said or "") + transform.finish()
        if said is None or (said == content and content):
            return choice
        others = {key: value for key, value in delta.items() if key != "content"} if isinstance(delta, dict) else {}
        if not said and not others and not choice.get("finish_reason"):
            return None
        return {**choice, "delta": {**others, "content": said} if said else others}

    def rest(self) -> list[tuple[int, str]]:
        """What is still held back, per choice (an answer that ended without a finish chunk)."""
        return [(index, said) for index, text in self._texts.items() if (said := text.finish())]


# The end of a sentence as a TTS engine's segmenter sees it: . ! ? ; … then a space or a line's end; a CJK full stop,
# question or exclamation mark, wherever it is; a new line.
RUN_ON_CHARS = 300  # without a sentence end in as many characters, the first "sentence" is these
_SENTENCE_END = re.compile(r"[.!?;…](?=\s)|[。！？；]|\n")


class SpokenAnswer:
    """The ChunkSink an answer streams through on its way to the caller: its content made speakable (when the turn
    asks for it) and the moment its first sentence is complete reported to the trace (`first_sentence`)."""

    def __init__(self, sink: Any, trace: Any, speakable: bool, may_start: bool = False) -> None:
        """`may_start`: a late waiting message may begin the response while the relay waits for the model."""
        self._sink = sink
        self.may_start = may_start
        self._trace = trace
        self._choices = SpeakableChoices() if speakable else None
        self._tail = ""  # the end of the text so far, to see a sentence end across chunks
        self._unended = 0  # characters said without a sentence end
        self._sentence_seen = False
        self._envelope: dict[str, Any] | None = None

    @property
    def started(self) -> bool:
        return self._sink.started

    async def send_chunk(self, data: dict[str, Any], raw: bytes | None = None) -> None:
        if self._choices is not None:
            if self._envelope is None:  # for what the transform still holds at a pause or the end
                self._envelope = {k: data.get(k) for k in ("id", "object", "created", "model", "system_fingerprint")}
            spoken = self._choices.chunk(data)
            if spoken is None:
                return  # all of it held back, nothing else in it
            if spoken is not data:
                data, raw = spoken, None
        if not self._sentence_seen:
            self._clock(data)
        await self._sink.send_chunk(data, raw)

    def _clock(self, data: dict[str, Any]) -> None:
        choices = data.get("choices")
        if not isinstance(choices, list):
            return
        delta = choices[0].get("delta") if choices and isinstance(choices[0], dict) else None
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str) and content:
            text = self._tail + content
            self._unended += len(content)
            # A run-on text is cut where a TTS engine's segmenter cuts it, by length: the clock (on the hottest path,
            # every chunk until then) stops there too.
            if _SENTENCE_END.search(text) or self._unended >= RUN_ON_CHARS:
                self._sentence_seen = True
                self._trace.first_sentence()
            self._tail = text[-1:]
        finished = choices and isinstance(choices[0], dict) and choices[0].get("finish_reason")
        if finished and self._tail and not self._sentence_seen:  # the whole answer was one sentence without a stop
            self._sentence_seen = True
            self._trace.first_sentence()

    async def send_comment(self, text: str) -> None:
        await self._sink.send_comment(text)

    async def pause(self) -> None:
        """The server's tools run: what the transform held back (a closing "!") is said now, not after them."""
        await self._say_held()
        await self._sink.pause()

    async def _say_held(self) -> None:
        if self._choices is not None and self._envelope is not None:
            for index, said in self._choices.rest():
                choice = {"index": index, "delta": {"content": said}, "logprobs": None, "finish_reason": None}
                await self._sink.send_chunk({**self._envelope, "choices": [choice]})

    async def done(self) -> None:
        await self._say_held()  # an upstream that ended without a finish chunk
        await self._sink.done()


def speakable_completion(completion: dict[str, Any]) -> dict[str, Any]:
    """A `stream: false` answer with its message's content made speakable."""
    choices = []
    for choice in completion.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            text = SpeakableText()
            choice = {**choice, "message": {**message, "content": text.feed(content) + text.finish()}}
        choices.append(choice)
    return {**completion, "choices": choices}
