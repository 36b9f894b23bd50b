"""The OpenAI wire protocol as this server speaks it: request parsing, chunks, SSE encoding, the error shape."""
