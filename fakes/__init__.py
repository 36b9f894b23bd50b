"""The stand-ins that tests and the benchmark share: a fake OpenAI-compatible upstream speaking the real wire format
(and one answering broken bytes), a fake embeddings endpoint, the `mcp` package's own server, Debian's redis-server
on a free port, a TCP relay that can cut a connection, the request shapes real clients send, texts for knowledge
bases, and one way to start a process and wait until it listens (processes.py). Nothing here is imported by the
server itself."""
