"""The conversation's memory in a turn: the remembered tool exchanges spliced back into what goes upstream, and the
exchanges of this turn remembered (llmserver.tools.memory keeps them)."""

from __future__ import annotations

from typing import Any

from ..tools.memory import ConversationMemory, Exchange, bounded_turn_id, conversation_key, turn_text
from ..tools.registry import ToolOutcome
from .model import ChatTurn


class ConversationStage:
    def __init__(self, memory: ConversationMemory) -> None:
        self.memory = memory

    async def __call__(self, turn: ChatTurn) -> None:
        chat, caller = turn.chat, turn.caller
        platform = (chat.platform, chat.conversation) if chat.platform and chat.conversation else None
        key = conversation_key(platform, chat.body.get("user"), caller.conversation_header, caller.credential)
        turn.conversation = key
        turn.trace.conversation_is(key)
        if key is None:
            return
        turn_ids = chat.message_turn_ids()
        sent = turn.body["messages"]  # the caller's, as earlier stages left them (one for one)
        messages = self.memory.splice(key, sent, turn_ids)
        if messages is not sent:
            turn.body = {**turn.body, "messages": messages}
        last_user = turn.last_user_index
        turn_id = turn_ids[last_user] if last_user is not None and last_user < len(turn_ids) else None
        asked = turn_text(chat.last_user_text())

        def remember(messages: list[dict[str, Any]], outcomes: list[ToolOutcome]) -> None:
            # The assistant's words of that pass are in the history the caller keeps; the calls are not.
            kept = ({**messages[0], "content": None}, *messages[1:])
            self.memory.remember(key, Exchange(asked, bounded_turn_id(turn_id), kept))

        turn.exchange_listeners.append(remember)
