"""Speakable text, measured: the transform over markdown-rich replies, and the time to the first sentence through the
server against the upstream's own.

    .venv/bin/python -m bench.speech            # about a minute

1. 200 replies a model might write for a voice call (headings, bullets, numbered steps, emphasis, inline code, links,
   bare URLs, e-mail addresses, tables, quotes, code, Chinese paragraphs), each streamed into the transform in
   3-character pieces: markup characters left, words lost, and the transform's time per chunk.
2. A markdown reply streamed by the fake upstream in 3-character pieces, 2 ms apart, straight and through the server as
   a voice platform's request (speakable): the time from the first content to the first whole sentence, p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import time

from bench.load import percentile
from fakes.processes import fake_upstream, llm_server
from llmserver.turn.speech import SpeakableText

WORDS = (
    "booking table guest museum ticket garden window evening morning coffee station platform river bridge market "
    "library concert gallery harbour island forest valley summit meadow lantern"
).split()
CHINESE = ["你好", "欢迎", "预订", "房间", "早餐", "时间", "地址", "电话", "服务", "帮助"]
# What must never reach the caller's TTS: emphasis, code marks, link syntax, table pipes, URL and address syntax,
# and markers at the start of a line (headings, bullets, quotes).
MARKUP = re.compile(r"\*|`|__|~~|\[|\]\(|\||https?:|://|www\.|\S@\S|^[ \t]*(#|[-+] |> )", re.M)


def sentence(rng: random.Random, words: int) -> tuple[str, list[str]]:
    chosen = [rng.choice(WORDS) for _ in range(words)]
    return " ".join(chosen).capitalize() + ".", chosen


def markdown_reply(rng: random.Random) -> tuple[str, list[str]]:
    """A reply with markdown in every form, and the words a listener must hear, in order."""
    parts: list[str] = []
    heard: list[str] = []

    def say(markdown: str, *words: str) -> None:
        parts.append(markdown)
        heard.extend(words)

    text, words = sentence(rng, 4)
    say(f"## {text}\n", *words)
    text, words = sentence(rng, 6)
    bold, italic = rng.sample(words, 2)
    say(text.replace(bold, f"**{bold}**", 1).replace(italic, f"*{italic}*", 1) + "\n\n", *words)
    for number in range(rng.randint(2, 4)):
        text, words = sentence(rng, 5)
        say(f"{number + 1}. {text}\n", *words)
    for _ in range(rng.randint(2, 3)):
        text, words = sentence(rng, 3)
        say(f"- {text} Use `{rng.choice(WORDS)}_{rng.choice(WORDS)}` there.\n", *words)
    page, host = rng.choice(WORDS), rng.choice(WORDS)
    say(f"See [the {page} page](https://{host}.example.com/{page}?ref=voice) or https://docs.{host}.io/{page}. ",
        "the", page, "page", "docs", host, "io", page)  # fmt: skip
    say(f"Mail {page}@{host}.org today.\n", page, host, "org")
    say(f"> {rng.choice(WORDS).capitalize()} ~~old~~ news.\n\n", "news")
    say(f"| {WORDS[0]} | {WORDS[1]} |\n|---|---|\n| {WORDS[2]} | {WORDS[3]} |\n", *WORDS[:4])
    say(f"```\n{rng.choice(WORDS)} = {rng.choice(WORDS)}\n```\n")
    chinese = "".join(rng.choice(CHINESE) for _ in range(6))
    say(f"**{chinese[:4]}**{chinese[4:]}。", chinese)
    return "".join(parts), heard


def transform_run(replies: int = 200, seed: int = 7) -> dict[str, float]:
    rng = random.Random(seed)
    markup_left = lost = chunks = 0
    seconds = 0.0
    for _ in range(replies):
        markdown, heard = markdown_reply(rng)
        pieces = [markdown[i : i + 3] for i in range(0, len(markdown), 3)]
        transform = SpeakableText()
        started = time.perf_counter()
        said = "".join(transform.feed(piece) for piece in pieces) + transform.finish()
        seconds += time.perf_counter() - started
        chunks += len(pieces)
        markup_left += len(MARKUP.findall(said))
        position, said = 0, said.lower()
        for word in heard:  # every word, in order
            found = said.find(word.lower(), position)
            if found < 0:
                lost += 1
            else:
                position = found + len(word)
    return {"replies": replies, "chunks": chunks, "markup": markup_left, "lost": lost, "us": seconds / chunks * 1e6}


FIRST_SENTENCE = re.compile(r"[.!?;…](?=\s)|[。！？；]|\n")


async def first_sentence_gap(port: int, path: str, headers: dict[str, str], streams: int) -> list[float]:
    """Milliseconds from each stream's first content to its first whole sentence, as the client reads them."""
    body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "Tell me."}]}).encode()
    gaps = []
    for _ in range(streams):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                     f"{len(body)}\r\nConnection: close\r\n{head}\r\n".encode() + body)  # fmt: skip
        first = said = None
        text, buffer = "", b""
        while said is None:
            data = await reader.read(65536)
            if not data:
                break
            buffer += data
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                line = event.split(b"data: ", 1)[-1]
                if not line.startswith(b"{"):
                    continue
                choices = json.loads(line).get("choices") or [{}]
                content = (choices[0].get("delta") or {}).get("content")
                if content:
                    now = time.perf_counter()
                    first = first or now
                    text += content
                    if said is None and FIRST_SENTENCE.search(text):
                        said = now
        writer.close()
        if first is not None and said is not None:
            gaps.append((said - first) * 1000)
    return gaps


async def sentence_run(streams: int) -> tuple[list[float], list[float]]:
    reply, _ = markdown_reply(random.Random(3))
    with fake_upstream(chunk_delay=0.002, reply=reply) as upstream, llm_server(upstream) as server:
        direct = await first_sentence_gap(upstream, "/v1/chat/completions", {}, streams)
        through = await first_sentence_gap(server, "/chat/completions", {"X-Voice-Platform": "agora"}, streams)
    return direct, through


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    args = parser.parse_args()
    run = transform_run()
    print("| measure | result | target |\n|---|---|---|")
    print(
        f"| the transform over {run['replies']} markdown-rich replies in 3-character pieces ({run['chunks']:,} chunks)"
        f" | {run['markup']} markup characters left, {run['lost']} words lost, {run['us'] / 1000:.4f} ms per chunk |"
        " 0, 0, ≤ 0.1 ms |"
    )
    direct, through = await sentence_run(args.streams)
    gap = statistics.median(through) - statistics.median(direct)
    print(
        f"| first whole sentence after the first content, p50 ({args.streams} streams, 3-character pieces 2 ms apart):"
        f" direct {percentile(direct, 50):.2f} ms, through the server (speakable) {percentile(through, 50):.2f} ms"
        f" | {gap:+.2f} ms | within 5 ms |"
    )


if __name__ == "__main__":
    asyncio.run(main())
