"""Parses and validates a Chat Completions request body, and separates the voice platforms' own fields from it
(platforms.py: the Agora engine's, Vapi's, ElevenLabs')."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError
from .json_body import parse_json
from .platforms import recognise

_NUMBER = (int, float)
MAX_MODEL_CHARS = 256
# Known fields and the JSON types they must have; unknown fields pass through unchecked.
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "a string"),
    "stream": ((bool,), "a boolean"),
    "temperature": (_NUMBER, "a number"),
    "top_p": (_NUMBER, "a number"),
    "presence_penalty": (_NUMBER, "a number"),
    "frequency_penalty": (_NUMBER, "a number"),
    "max_tokens": ((int,), "an integer"),
    "max_completion_tokens": ((int,), "an integer"),
    "n": ((int,), "an integer"),
    "seed": ((int,), "an integer"),
    "top_logprobs": ((int,), "an integer"),
    "logprobs": ((bool,), "a boolean"),
    "parallel_tool_calls": ((bool,), "a boolean"),
    "stop": ((str, list, type(None)), "a string or a list of strings"),
    "user": ((str,), "a string"),
    "tools": ((list,), "a list"),
    "tool_choice": ((str, dict), "a string or an object"),
    "response_format": ((dict,), "an object"),
    "modalities": ((list,), "a list"),
    "audio": ((dict, type(None)), "an object"),
    "stream_options": ((dict, type(None)), "an object"),
    "logit_bias": ((dict,), "an object"),
}


@dataclass
class ChatRequest:
    """A validated request: `body` is what goes upstream, `engine_fields` what the voice platform added (its top-level
    fields, and under "messages" each message's), `platform` the platform's name (None: a plain OpenAI client)."""

    body: dict[str, Any]
    engine_fields: dict[str, Any] = field(default_factory=dict)
    platform: str | None = None
    conversation: list[str] | None = None  # the platform's own id of the conversation, when it sends one

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def model(self) -> str:
        return self.body["model"]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body["messages"]

    @property
    def turn_id(self) -> Any:
        return self.engine_fields.get("turn_id")

    @property
    def include_usage(self) -> bool:
        return include_usage(self.body)

    def message_turn_ids(self) -> list[Any]:
        """The engine's turn id of each message (None where it sent none)."""
        return [fields.get("turn_id") for fields in self.message_fields()]

    def message_fields(self) -> list[dict[str, Any]]:
        """The platform's fields of each message (the Agora engine's `turn_id`, `timestamp`, `metadata`), in order;
        empty when it sent none."""
        fields = self.engine_fields.get("messages")
        if not isinstance(fields, list):
            return []
        return [f if isinstance(f, dict) else {} for f in fields]

    def last_user_text(self) -> str:
        return last_user_text(self.messages)


def include_usage(body: dict[str, Any]) -> bool:
    """Whether the client asked for the usage chunk (`stream_options.include_usage`)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def tool_names(tools: Any) -> set[str]:
    """The function names in a request's `tools` list (whatever else the list holds is skipped)."""
    return {
        tool["function"].get("name")
        for tool in tools or []
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
    }


def last_user_text(messages: Sequence[Any]) -> str:
    """The text of the last user message; the text parts of multi-part content are joined."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return " ".join(part for part in parts if isinstance(part, str))
    return ""


def _check_tool_parts(message: dict[str, Any], param: str) -> None:
    """A message's tool calls and tool result id, in the shape OpenAI requires (it refuses any other with a 400)."""
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise ApiError(
                400, f"'{param}.tool_calls' must be a list.", param=f"{param}.tool_calls", code="invalid_type"
            )
        for number, call in enumerate(calls):
            where = f"{param}.tool_calls[{number}]"
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(call, dict) or not isinstance(call.get("id"), str) or not isinstance(function, dict):
                raise ApiError(
                    400, f"'{where}' must be an object with an 'id' and a 'function'.", param=where, code="invalid_type"
                )
            if not isinstance(function.get("name"), str) or not isinstance(function.get("arguments", ""), str):
                raise ApiError(
                    400,
                    f"'{where}.function' must have a 'name' and 'arguments' that are strings.",
                    param=f"{where}.function",
                    code="invalid_type",
                )
    if message.get("role") == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise ApiError(
            400, f"'{param}.tool_call_id' must be a string.", param=f"{param}.tool_call_id", code="invalid_type"
        )


def _is_type(value: Any, types: tuple[type, ...]) -> bool:
    # bool is an int in Python, but not an integer or a number in JSON Schema.
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def parse_chat_request(raw: bytes, default_model: str, platform_header: str | None = None) -> ChatRequest:
    """Validates `raw` (the HTTP body); raises ApiError or InvalidJson (400) naming the offending field.
    `platform_header` is X-Voice-Platform, for a platform that adds no fields of its own."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_body")

    messages = body.get("messages")
    if messages is None:
        raise ApiError(
            400, "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    if not isinstance(messages, list):
        raise ApiError(400, "'messages' must be a list of message objects.", param="messages", code="invalid_type")
    if not messages:
        raise ApiError(400, "'messages' must not be empty.", param="messages", code="empty_array")
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"'{param}' must be an object.", param=param, code="invalid_type")
        if not isinstance(message.get("role"), str):
            raise ApiError(400, f"'{param}.role' must be a string.", param=f"{param}.role", code="invalid_type")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise ApiError(
                400,
                f"'{param}.content' must be a string or a list of parts.",
                param=f"{param}.content",
                code="invalid_type",
            )
        _check_tool_parts(message, param)

    for name, (types, described) in _FIELD_TYPES.items():
        # null is accepted for every optional parameter, as OpenAI does, and passed on as it is.
        if body.get(name) is not None and not _is_type(body[name], types):
            raise ApiError(400, f"'{name}' must be {described}.", param=name, code="invalid_type")
    for index, tool in enumerate(body.get("tools") or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            param = f"tools[{index}].function.name"
            raise ApiError(400, f"'{param}' must be a non-empty string.", param=param, code="invalid_type")

    if isinstance(body.get("model"), str) and len(body["model"]) > MAX_MODEL_CHARS:
        # Every chunk of the answer names the model: a megabyte name would be sent back hundreds of times over.
        raise ApiError(
            400, f"'model' must be at most {MAX_MODEL_CHARS} characters.", param="model", code="string_above_max_length"
        )
    platforms, platform_name = recognise(body, platform_header)
    engine_fields: dict[str, Any] = {}
    conversation = None
    for platform in platforms:  # each one's fields stay home, whichever of them names the conversation
        fields = {name: body.pop(name) for name in platform.top_level if name in body}
        engine_fields.update(fields)
        conversation = conversation or platform.conversation(fields)
        message_fields = [{name: m.pop(name) for name in platform.per_message if name in m} for m in messages]
        if any(message_fields):
            engine_fields["messages"] = message_fields
    if not body.get("model"):
        body["model"] = default_model
    return ChatRequest(body=body, engine_fields=engine_fields, platform=platform_name, conversation=conversation)
