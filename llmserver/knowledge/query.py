"""The retrieval query of a conversation: the last user turn, and what it may refer back to.

Voice users follow up without a subject ("and with breakfast?", "what about the suite?"), and Agora's engine sends
the conversation, so the query has two parts: the last user turn alone, and a history-weighted one that adds the
user's previous turn and the assistant's last reply. Retrieval ranks with both and fuses the rankings (fusion.py),
so a standalone question after a change of topic is still found by its own words; nothing calls an LLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..protocol.chat_request import message_text

HISTORY_CHARS = 600  # of each earlier turn: enough to say what it was about


@dataclass(frozen=True)
class RetrievalQuery:
    text: str  # the last user turn
    history: str  # the turns it may refer back to, most recent first ("" when there are none)

    @property
    def shown(self) -> str:
        """The query as the request log and the dashboard show it."""
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
    return RetrievalQuery(turns[last_user][1], " ".join(history))


def single_query(text: str) -> RetrievalQuery:
    return RetrievalQuery(text.strip(), "")
