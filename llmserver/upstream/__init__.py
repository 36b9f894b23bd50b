"""The LLM behind the server: the upstream protocol, the OpenAI-compatible client, the offline responder, the relay."""
