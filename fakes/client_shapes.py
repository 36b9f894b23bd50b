"""The request bodies real voice clients send, as their documentation and code build them: the tests replay each on
every endpoint, offline and relayed, and the fuzz campaign (bench.fuzz) sends them among its hostile cases.

Each function returns a new body (the server may change what it is given). The field sets come from the clients'
own code: Agora's Conversational AI engine with `llm.vendor: "custom"` (system_messages first, turn ids, timestamps,
per-message metadata, RTM `context`), Pipecat's and LiveKit Agents' OpenAI services (a system prompt always,
`stream_options.include_usage`), Vapi's custom-llm (`call`, `customer`, `phoneNumber`, `metadata`) and ElevenLabs
Agents' custom LLM (`elevenlabs_extra_body`, `user_id`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

QUESTION = "How do I connect this server to Agora?"
Body = dict[str, Any]


def agora_engine(question: str = QUESTION, turn: int = 3) -> Body:
    """Agora's engine, vendor "custom": `llm.system_messages`, then the history (`llm.max_history`), each message
    with its turn id, timestamp and metadata; an interrupted assistant turn carries what was spoken as `content` and
    the whole text as `metadata.original`; RTM adds `context`."""
    ms = 1764700000000
    return {
        "model": "gpt-4o-mini",
        "stream": True,
        "temperature": 0.7,
        "max_tokens": 512,
        "turn_id": turn,
        "timestamp": ms + turn * 5000,
        "interruptable": True,
        "context": {"appId": "a1b2c3", "userId": "1001", "channel": "support-42", "presence": {"1001": {"mood": 1}}},
        "messages": [
            {"role": "system", "content": "You are a friendly voice assistant. Keep answers short."},
            {"role": "system", "content": "The caller's name is Lin."},
            {
                "role": "assistant",
                "content": "Hello, how can I help you today?",
                "turn_id": 0,
                "timestamp": ms,
                "metadata": {"source": "greeting"},
            },
            {
                "role": "user",
                "content": "What can you do?",
                "turn_id": 1,
                "timestamp": ms + 5000,
                "metadata": {"source": "asr"},
            },
            {
                "role": "assistant",
                "content": "I can answer questions about",
                "turn_id": 1,
                "timestamp": ms + 6000,
                "metadata": {
                    "source": "llm",
                    "interrupted": True,
                    "interrupt_timestamp": ms + 7200,
                    "original": "I can answer questions about this server, its knowledge base and its audio replies.",
                },
            },
            {
                "role": "user",
                "content": question,
                "turn_id": turn,
                "timestamp": ms + turn * 5000,
                "metadata": {"source": "asr"},
            },
        ],
    }


def pipecat(question: str = QUESTION) -> Body:
    """Pipecat's OpenAILLMService: the context's system prompt, usage asked for, its default sampling settings."""
    return {
        "model": "gpt-4o",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [
            {"role": "system", "content": "You are a helpful LLM in a WebRTC call. Your output will be spoken aloud."},
            {"role": "user", "content": question},
        ],
        "seed": None,
        "temperature": None,
        "top_p": None,
        "frequency_penalty": None,
        "presence_penalty": None,
        "max_completion_tokens": None,
    }


def livekit(question: str = QUESTION) -> Body:
    """LiveKit Agents' openai.LLM: the agent's instructions as the system message, usage asked for, a user id."""
    return {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [
            {"role": "system", "content": "You are a voice assistant created by LiveKit."},
            {"role": "user", "content": [{"type": "text", "text": question}]},
        ],
        "user": "livekit-participant-7",
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup_weather",
                    "description": "Look up the weather for a location.",
                    "parameters": {
                        "type": "object",
                        "properties": {"location": {"type": "string"}},
                        "required": ["location"],
                    },
                },
            }
        ],
    }


def vapi(question: str = QUESTION) -> Body:
    """Vapi's custom-llm with its default metadataSendMode: `call`, `customer`, `phoneNumber` and `metadata`."""
    return {
        "model": "gpt-4o",
        "stream": True,
        "temperature": 0.7,
        "max_tokens": 250,
        "messages": [
            {"role": "system", "content": "You are Riley, a scheduling assistant."},
            {"role": "assistant", "content": "Hi, this is Riley. How can I help?"},
            {"role": "user", "content": question},
        ],
        "call": {
            "id": "b0f8a8e3-6c6d-4a61-9d3e-3e7f1c2a9b10",
            "orgId": "2f1e3d4c-0000-4000-8000-1234567890ab",
            "type": "inboundPhoneCall",
            "status": "in-progress",
        },
        "customer": {"number": "+14155550123"},
        "phoneNumber": {"id": "7c1d0e2f-1111-4222-8333-444455556666", "number": "+14155559876"},
        "metadata": {"crm_id": "C-1009"},
    }


def elevenlabs(question: str = QUESTION) -> Body:
    """ElevenLabs Agents' custom LLM with "custom LLM extra body" on: `elevenlabs_extra_body` and `user_id`."""
    return {
        "model": "gpt-4o-mini",
        "stream": True,
        "temperature": 0.5,
        "max_tokens": 5000,
        "messages": [
            {"role": "system", "content": "You are a support agent for a hotel."},
            {"role": "user", "content": question},
        ],
        "user_id": "el-user-314",
        "elevenlabs_extra_body": {"conversation_id": "conv_01jx9", "agent_id": "agent_7"},
    }


CLIENTS: dict[str, Callable[..., Body]] = {
    "agora": agora_engine,
    "pipecat": pipecat,
    "livekit": livekit,
    "vapi": vapi,
    "elevenlabs": elevenlabs,
}
