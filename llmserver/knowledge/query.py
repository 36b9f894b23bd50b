"""The retrieval query of a conversation: the last user turn, and what it may refer back to.

Voice users follow up without a subject ("and with breakfast?", "what about the suite?"), and Agora's engine sends
the conversation, so the query has two parts: the last user turn alone, and a history-weighted one that adds the
user's previous turn and the assistant's last reply. Retrieval ranks with both and fuses the rankings (fusion.py),
so a standalone question after a change of topic is still found by its own words; nothing calls an LLM.

What a turn says besides its topic is left out: the request's phrasing ("look up", "can you tell me", "帮我查一下")
matches passages by its own words ("up to 10 seconds"), and small talk ("Hi", "Thanks, bye.", "嗯") asks nothing
of the knowledge base, so it retrieves nothing. A turn is bounded (MAX_QUERY_CHARS): the search costs time in
proportion to its words, and a question is never that long.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..protocol.chat_request import message_text

HISTORY_CHARS = 600  # of each earlier turn: enough to say what it was about
MAX_QUERY_CHARS = 1000  # of the last turn (its end: a long message usually asks its question last)

_SMALL_TALK_WORDS = (
    "hi|hello|hey|hiya|yo|good (?:morning|afternoon|evening|night)|thanks|thank you(?: very much| so much)?|"
    "thx|cheers|bye|goodbye|bye bye|see you|ok|okay|k|alright|all right|great|cool|nice|sure|yes|yeah|yep|"
    "no|nope|right|got it|i see|uh|um|uhm|hmm|hm|mm|mhm|ah|oh|wow|please|sorry|you too|"
    "你好|您好|嗨|哈喽|谢谢|谢谢你|多谢|感谢|再见|拜拜|好的|好|行|可以|对|对的|是的|是|嗯|嗯嗯|哦|噢|啊|呃|额|明白了|知道了|没事|不客气"
)
_SMALL_TALK = re.compile(rf"^(?:(?:{_SMALL_TALK_WORDS})[\s\W_]*)+$", re.IGNORECASE)
_REQUEST_PHRASING = re.compile(
    r"^\W*(?:(?:please|hey|hi|hello|ok|okay|so|um|uh)\b[\s,]*)*"
    r"(?:(?:can|could|would|will) you(?: please)?\s+|i(?:'d| would) like you to\s+|please\s+)?"
    r"(?:look(?: it)? up|search(?: the knowledge base)?(?: for)?|find(?: out)?|tell me(?: about)?|"
    r"i (?:want|would like|need) to know|i'd like to know|do you know)\b[\s,:]*"
    r"|^(?:请|麻烦)?(?:帮我|给我)?(?:查一下|查查|查询一下|查询|搜一下|搜索一下|搜索|找一下|问一下|看看)[，,：:\s]*"
    r"|^请问[，,\s]*",
    re.IGNORECASE,
)


def is_small_talk(text: str) -> bool:
    """A greeting, thanks, goodbye or filler, which asks the knowledge base nothing."""
    return bool(_SMALL_TALK.match(text.strip()))


def topic_of(text: str) -> str:
    """The turn as a search query: bounded, without the words that ask rather than say what about."""
    text = text.strip()
    if len(text) > MAX_QUERY_CHARS:
        text = text[-MAX_QUERY_CHARS:]
        text = text[text.find(" ") + 1 :] if " " in text[:40] else text  # from a word's start
    return _REQUEST_PHRASING.sub("", text, count=1).strip() or text


@dataclass(frozen=True)
class RetrievalQuery:
    text: str  # the last user turn ("" when there is nothing to look up)
    history: str  # the turns it may refer back to, most recent first ("" when there are none)
    said: str = ""  # the turn as spoken, when it was small talk and so retrieves nothing

    @property
    def shown(self) -> str:
        """The query as the request log and the dashboard show it."""
        if self.said:
            return f"{self.said}  (small talk: nothing looked up)"
        return self.text if not self.history else f"{self.text}  ⟵  {self.history}"


def _turn(message: Any) -> tuple[str, str] | None:
    if not isinstance(message, dict):
        return None
    role = message.get("role")
    if role not in ("user", "assistant"):
        return None
    text = message_text(message).strip()  # an audio reply known only by its id has none: nothing to go on
    return (role, text) if text else None


def conversation_query(messages: Sequence[Any]) -> RetrievalQuery:
    """The last user turn, and as history the user's turn before it and the assistant's reply in between."""
    turns = [turn for turn in map(_turn, messages) if turn is not None]
    last_user = max((i for i, (role, _) in enumerate(turns) if role == "user"), default=None)
    if last_user is None:
        return RetrievalQuery("", "")
    earlier = turns[:last_user]
    history: list[str] = []
    reply = next((text for role, text in reversed(earlier) if role == "assistant"), None)
    previous = next((text for role, text in reversed(earlier) if role == "user"), None)
    for text in (previous, reply):
        if text:
            history.append(text[:HISTORY_CHARS])
    return single_query(turns[last_user][1], " ".join(history))


def single_query(text: str, history: str = "") -> RetrievalQuery:
    if is_small_talk(text):
        return RetrievalQuery("", "", said=text.strip()[:HISTORY_CHARS])
    return RetrievalQuery(topic_of(text), history[: 2 * HISTORY_CHARS + 1])
