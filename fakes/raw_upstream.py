"""An upstream that answers with bytes it is given, HTTP or not: what a broken proxy, a wrong port or a hostile
upstream sends. It reads each request (headers and Content-Length body) before answering, on 127.0.0.1 and a port
the OS picks. The fuzz campaign runs it as a separate process: `python -m fakes.raw_upstream --answer NAME` prints
its port, then answers every request with that one of MALFORMED_ANSWERS."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

OK_STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


def sse_body(words: int = 3) -> bytes:
    chunks = [
        {
            "id": "chatcmpl-raw",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "raw",
            "choices": [{"index": 0, "delta": {"content": f"w{n} "}, "logprobs": None, "finish_reason": None}],
        }
        for n in range(words)
    ]
    return b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"


# Each answer is the whole of what the upstream writes on one connection; then it closes it.
MALFORMED_ANSWERS = {
    "bad_status_line": b"HTTP/1.1 twohundred OK\r\nContent-Length: 0\r\n\r\n",
    "not_http": b"SSH-2.0-OpenSSH_9.6\r\n",
    "bad_chunk_size": OK_STREAM_HEAD + b"Transfer-Encoding: chunked\r\n\r\nZZZ\r\ndata: {}\r\n",
    "huge_header_line": b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 100_000 + b"\r\nContent-Length: 0\r\n\r\n",
    "stray_bytes_after_body": OK_STREAM_HEAD
    + b"Content-Length: %d\r\n\r\n" % len(sse_body())
    + sse_body()
    + b"HTTP/1.1 200 OK\r\nthis is not a response\r\n\r\n",
    "content_length_lies": OK_STREAM_HEAD + b"Content-Length: 100000\r\n\r\n" + sse_body(),
    "header_without_colon": b"HTTP/1.1 200 OK\r\nContent-Type text/event-stream\r\n\r\n" + sse_body(),
}


class RawUpstream:
    def __init__(self, answer: bytes, keep_open: bool = False) -> None:
        self.answer = answer
        self.keep_open = keep_open  # after the answer, leave the connection open (the client must judge it)
        self.requests = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.requests += 1
                writer.write(self.answer)
                await writer.drain()
                if not self.keep_open:
                    break
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _main() -> None:
    parser = argparse.ArgumentParser(description="Run an upstream that answers every request with malformed bytes.")
    parser.add_argument("--answer", required=True, choices=sorted(MALFORMED_ANSWERS), help="what it answers")
    parser.add_argument("--keep-open", action="store_true", help="leave each connection open after the answer")
    args = parser.parse_args()
    upstream = await RawUpstream(MALFORMED_ANSWERS[args.answer], keep_open=args.keep_open).start()
    print(upstream.port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main())
