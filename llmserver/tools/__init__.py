"""Tools the server runs itself (built-in, HTTP webhooks, MCP servers), their registry, and the memory of a
conversation's tool exchanges."""
