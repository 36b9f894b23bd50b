"""The voice platforms that call the server as their LLM, recognised by the fields they add to an OpenAI request (or,
for one that adds none, by a header its operator sets). OpenAI refuses unknown fields, so a platform's own fields
never go upstream: they are kept apart, for the request record and for the conversation's key.

- Agora's Conversational AI engine (vendor "custom"): recognised by `turn_id`, `interruptable` or `context`, or a
  message's `turn_id`; it adds those, `timestamp`, and per message `timestamp` and `metadata`; its conversation is
  the RTM `context`'s appId, userId and channel.
- Vapi (custom-llm): `call`, `customer`, `phoneNumber` (and it adds `metadata`); its conversation is `call.id`.
- ElevenLabs Agents (custom LLM): `elevenlabs_extra_body`, `user_id`; its conversation is
  `elevenlabs_extra_body.conversation_id`, else `user_id`.
- Deepgram Voice Agent (think provider `open_ai`): adds nothing; recognised by `X-Voice-Platform: deepgram`, set in
  `think.endpoint.headers` (with `X-Conversation-Id` for its conversation).

Any request may name its platform with `X-Voice-Platform` (which also marks it as a voice request).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _text(value: Any) -> str | None:
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value) else None


def _agora_conversation(fields: dict[str, Any]) -> list[str] | None:
    context = fields.get("context")
    if not isinstance(context, dict):
        return None
    parts = [_text(context.get(name)) for name in ("appId", "userId", "channel")]
    return [str(part) if part is not None else "" for part in parts] if any(parts) else None


def _vapi_conversation(fields: dict[str, Any]) -> list[str] | None:
    call = fields.get("call")
    call_id = _text(call.get("id")) if isinstance(call, dict) else None
    return [str(call_id)] if call_id is not None else None


def _elevenlabs_conversation(fields: dict[str, Any]) -> list[str] | None:
    extra = fields.get("elevenlabs_extra_body")
    conversation = _text(extra.get("conversation_id")) if isinstance(extra, dict) else None
    if conversation is not None:
        return [str(conversation)]
    user = _text(fields.get("user_id"))
    return [str(user)] if user is not None else None


@dataclass(frozen=True)
class Platform:
    name: str
    marks: tuple[str, ...]  # top-level fields any one of which recognises it
    top_level: tuple[str, ...]  # the top-level fields it adds, kept from the upstream
    per_message: tuple[str, ...] = ()  # the fields it adds to each message
    message_mark: str | None = None  # a per-message field that recognises it
    conversation: Callable[[dict[str, Any]], list[str] | None] = field(default=lambda fields: None)

    def recognised_in(self, body: dict[str, Any]) -> bool:
        if any(name in body for name in self.marks):
            return True
        mark = self.message_mark
        return mark is not None and any(
            isinstance(message, dict) and mark in message for message in body.get("messages") or ()
        )


AGORA = Platform(
    "agora",
    # What only the engine sends: a `timestamp` or a message's `metadata` alone could be anyone's.
    marks=("turn_id", "interruptable", "context"),
    top_level=("context", "turn_id", "timestamp", "interruptable"),
    per_message=("turn_id", "timestamp", "metadata"),
    message_mark="turn_id",
    conversation=_agora_conversation,
)
VAPI = Platform(
    "vapi",
    marks=("call", "customer", "phoneNumber"),
    top_level=("call", "customer", "phoneNumber", "metadata"),
    conversation=_vapi_conversation,
)
ELEVENLABS = Platform(
    "elevenlabs",
    marks=("elevenlabs_extra_body", "user_id"),
    top_level=("elevenlabs_extra_body", "user_id"),
    conversation=_elevenlabs_conversation,
)
DEEPGRAM = Platform("deepgram", marks=(), top_level=())
PLATFORMS: tuple[Platform, ...] = (AGORA, VAPI, ELEVENLABS, DEEPGRAM)
_BY_NAME = {platform.name: platform for platform in PLATFORMS}
MAX_PLATFORM_NAME = 32


def recognise(body: dict[str, Any], header: str | None) -> tuple[list[Platform], str | None]:
    """The platforms whose fields a request carries (usually one), and the name to record: the first of them, else
    the header's. A platform the server does not know, named by the header, is recorded (and the request treated as a
    voice request) with nothing taken from its body."""
    found = [platform for platform in PLATFORMS if platform.marks and platform.recognised_in(body)]
    if found:
        return found, found[0].name
    if header:
        named = header.strip().lower()[:MAX_PLATFORM_NAME]
        known = _BY_NAME.get(named)
        return ([known] if known else []), named or None
    return [], None
