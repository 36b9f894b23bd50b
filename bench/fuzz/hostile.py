"""The hostile requests of phase 1, as tables: each family of cases is a list of rows (a kind's name, what it puts
where, the values it draws from), read by a few small builders. Case number i is the same for a given seed, whatever
order the workers take them: its generator is seeded with the seed and i.

Five categories: bodies (malformed, truncated, huge, deeply nested and badly typed JSON, lone surrogates, NaN and
1e400, hostile forms and uploads), headers (Content-Length, chunked framing, origins, forwarded addresses,
authorization schemes, request ids, hosts, cookies...), framing (partial, pipelined, abandoned, byte-by-byte
requests, odd versions and targets), every method on every route, and traversal names on the static files and the
admin API, with and without the admin token."""

from __future__ import annotations

import functools
import io
import json
import math
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile

from .wire import HOST, Header, as_bytes, build_request, multipart

SAMPLE_RATE = 16_000

COMPLETIONS = (
    "/chat/completions /v1/chat/completions /rag/chat/completions /v1/rag/chat/completions "
    "/audio/chat/completions /v1/audio/chat/completions"
).split()
ROUTES = [
    *COMPLETIONS,
    "/v1/models",
    "/models",
    "/rag/models",
    "/v1/rag/models",
    "/audio/models",
    "/v1/audio/models",
    "/healthz",
    "/admin",
    "/admin/",
    "/admin/api/status",
    "/admin/api/retrieval?q=agora&k=3",
    "/admin/api/knowledge",
    "/admin/api/knowledge.json",
    "/admin/api/knowledge/connect-agora",
    "/admin/api/audio",
    "/admin/api/audio/file.wav",
    "/admin/api/audio/file/activate",
    "/admin/api/audio/file",
    "/admin/ws/logs",
    "/static/admin.css",
    "/static/js/main.js",
    "/",
    "/no/such/route",
]
METHODS = "GET POST PUT DELETE PATCH OPTIONS HEAD PROPFIND TRACE CONNECT get FUZZ".split()
QUESTIONS = [
    "How do I connect this server to Agora?",
    "What is the waiting message?",
    "怎么连接声网的对话式AI引擎？",
    "Hello, who are you?",
]
TRAVERSALS = [
    "../../../../etc/passwd",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "%2e%2e%2f%2e%2e%2fserver.py",
    "..",
    ".",
    "%2e%2e",
    "%00",
    "file%00.pcm",
    "a%00b",
    "%2500",
    "....//....//etc/passwd",
    "..\\..\\..\\windows\\win.ini",
    "%5c..%5c..%5cserver.py",
    "%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    "%ff%fe%fd",
    "%ED%A0%80",
    "ünïcødé",
    "%F0%9F%98%80",
    "/etc/passwd",
    "//etc/passwd",
    ".hidden",
    "library.json",
    "..%2flibrary.json",
    "knowledge.json",
    "js/../../server.py",
    "js/%2e%2e/%2e%2e/server.py",
    "admin.css%00.js",
    "%0d%0aX-Fuzz-Injected:%20yes",
    "%",
    "%zz",
    "~",
    "%20",
    "a b",
    "con",
    "file",
    "connect-agora",
    "A" * 65,
    "B" * 5000,
    "C" * 70000,
]
WRONG_VALUES = [
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1.5",
    '"text"',
    '""',
    "[]",
    "{}",
    "[1, 2]",
    '{"a": 1}',
    "18446744073709551616",
    '"\\u0000"',
    '[{"role": "user"}]',
    "[null]",
    '[{"type": "text", "text": 5}]',
]
HOLE = "__FUZZ_HOLE__"
HOLE_PATHS: list[tuple[Any, ...]] = [
    ("messages", -1, "content"),
    ("messages", -1, "role"),
    ("messages", -1, "name"),
    ("messages", -1, "metadata"),
    ("messages", -1, "turn_id"),
    ("messages",),
    ("messages", -1),
    ("model",),
    ("stream",),
    ("temperature",),
    ("top_p",),
    ("max_tokens",),
    ("n",),
    ("seed",),
    ("stop",),
    ("tools",),
    ("tool_choice",),
    ("response_format",),
    ("modalities",),
    ("audio",),
    ("stream_options",),
    ("logit_bias",),
    ("user",),
    ("context",),
    ("turn_id",),
    ("timestamp",),
    ("interruptable",),
    ("fuzz_unknown_field",),
]
ADMIN_HOLE_PATHS: list[tuple[Any, ...]] = [("id",), ("title",), ("content",), ("tags",), ("enabled",), ("version",)]


@dataclass
class Case:
    kind: str
    pieces: list[tuple[bytes, float]]
    methods: list[str]  # one per response expected
    linger: float = 0.0
    timeout: float = 15.0
    until_close: bool = False
    note: str = ""  # what to show in a defect report

    @classmethod
    def one(cls, kind: str, data: bytes, method: str = "POST", **kwargs: Any) -> Case:
        return cls(kind, [(data, 0.0)], [method], **kwargs)


def _set_path(document: Any, path: tuple[Any, ...], value: Any) -> None:
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value


def _with_hole(body: dict[str, Any], path: tuple[Any, ...], raw: bytes) -> bytes:
    document = json.loads(json.dumps(body))
    _set_path(document, path, HOLE)
    return json.dumps(document, ensure_ascii=False).encode().replace(f'"{HOLE}"'.encode(), raw, 1)


def _wav_header(rate: int, channels: int = 1, bits: int = 16, data: bytes = b"", kind: int = 1) -> bytes:
    """A WAV file with the header it is given, however unlikely (`kind` 1 is PCM, 3 float, 6 A-law)."""
    block = channels * bits // 8
    fmt = struct.pack("<IHHIIHH", 16, kind, channels, rate, (rate * block) & 0xFFFFFFFF, block, bits)
    chunks = [b"WAVE", b"fmt ", fmt, b"data", struct.pack("<I", len(data)), data]
    return b"RIFF" + struct.pack("<I", 36 + len(data)) + b"".join(chunks)


@functools.cache
def odd_audio() -> list[bytes]:
    """Audio files that are valid, or nearly, but unusual: odd sample rates, channel counts and sample formats,
    NaN samples, no samples, FLAC and OGG, and truncated ones."""
    tone = (np.sin(np.arange(800) / 5.0) * 0.3).astype("float32")
    files = [_wav_header(rate, data=b"\x01\x00" * 100) for rate in (0, 1, 7, 4000, 192_000, 2**31 - 1, 2**32 - 1)]
    files += [
        _wav_header(16_000, channels=0, data=b"\x01\x00" * 10),
        _wav_header(16_000, channels=1024, data=b"\x01\x00" * 10),
        _wav_header(16_000, bits=7, data=b"\x01\x00" * 10),
        _wav_header(16_000, bits=32, kind=3, data=struct.pack("<4f", math.nan, math.inf, 1e30, -1e30)),
        _wav_header(8_000, bits=8, kind=6, data=b"\x55" * 100),
    ]
    for samples, rate, kind in ((tone, 16_000, "FLAC"), (tone, 16_000, "OGG"), (np.zeros((100, 8)), 44_100, "WAV")):
        buffer = io.BytesIO()
        soundfile.write(buffer, samples, rate, format=kind)
        files += [buffer.getvalue(), buffer.getvalue()[: len(buffer.getvalue()) // 2]]
    return files


def _deep(rng: random.Random) -> bytes:
    depth = int(10 ** rng.uniform(2, 5))
    kind = rng.choice(["list", "object", "mixed"])
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'[{"a":' * (depth // 2) + b"0" + b"}]" * (depth // 2)


def _pick(rng: random.Random, shares: Sequence[tuple[float, Any]]) -> Any:
    """The item of `shares` ((up to, item), in increasing order) whose range holds a random number in [0, 1)."""
    roll = rng.random()
    return next(item for upto, item in shares if roll < upto)


class HostileCases:
    """The hostile requests for one server: its address, its admin token and the dashboard's cookies, which the
    tables' values name as {host}, {port} and {token}."""

    def __init__(self, seed: int, port: int, admin_token: str, admin_cookie: str = "", xsrf_cookie: str = "") -> None:
        self.seed = seed
        self.port = port
        self.token = admin_token
        self.host = f"{HOST}:{port}"
        self.admin_cookie = admin_cookie  # "llm_admin=...", as the dashboard's sign-in sets it
        self.xsrf_cookie = xsrf_cookie  # "_xsrf=...", as the dashboard's page sets it

    def case(self, number: int) -> Case:
        rng = random.Random(f"{self.seed}:{number}")
        return _pick(rng, CATEGORIES)(self, rng)

    def fill(self, value: Any) -> Any:
        """A table's text with this server's {host}, {port} and {token} in it (bytes and the rest as they are)."""
        if not isinstance(value, str):
            return value
        return value.replace("{host}", self.host).replace("{port}", str(self.port)).replace("{token}", self.token)

    def chat_body(self, rng: random.Random) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": "gpt-4o-mini",
            "stream": rng.random() < 0.6,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": rng.choice(QUESTIONS)},
            ],
        }
        if rng.random() < 0.3:
            body["stream_options"] = {"include_usage": True}
        if rng.random() < 0.2:
            body.update(
                turn_id=rng.randint(0, 99), timestamp=1.7e9 + rng.random(), interruptable=True, context={"k": 1}
            )
        return body

    def admin_document(self, rng: random.Random) -> dict[str, Any]:
        return {
            "id": f"fuzz-{rng.randint(0, 30)}",
            "title": "Fuzz",
            "content": "fuzzing text about agora",
            "tags": ["fuzz"],
            "enabled": True,
            "version": 10**6,
        }

    def headers(
        self, rng: random.Random, *, content_type: str | None = "application/json", admin: bool | None = None
    ) -> list[Header]:
        headers: list[Header] = [("Host", self.host)]
        if content_type:
            headers.append(("Content-Type", content_type))
        if admin is None:
            admin = rng.random() < 0.5
        if admin and self.admin_cookie and rng.random() < 0.25:
            # The dashboard's way: the signed cookie, and the XSRF token in a header (or not, or a wrong one).
            xsrf = self.xsrf_cookie.partition("=")[2]
            variant = rng.choice(["right", "right", "missing", "wrong", "garbage", "no-cookie"])
            cookie = self.admin_cookie if variant == "no-cookie" else f"{self.admin_cookie}; {self.xsrf_cookie}"
            headers.append(("Cookie", cookie))
            if variant in ("right", "no-cookie"):
                headers.append(("X-XSRFToken", xsrf))
            elif variant == "wrong":
                headers.append(("X-XSRFToken", "2|00000000|" + "0" * 32 + "|1700000000"))
            elif variant == "garbage":
                headers.append(("X-XSRFToken", rng.choice(["2|zz|yy|x", "1|a", "", "|||", "2|" + "a" * 5000])))
        elif admin:
            headers.append(("Authorization", f"Bearer {self.token}"))
        return headers

    def finish_headers(self, rng: random.Random, headers: list[Header]) -> list[Header]:
        """The server believes X-Forwarded-For from 127.0.0.1 (TRUSTED_PROXIES): requests with the right admin token
        appear to come from a random address of 10/8, so the throttle on wrong tokens (which lands on 127.0.0.1, or
        on one of those addresses after a wrong token in a form or a query) leaves the token's requests reaching the
        handlers. A fuzzed X-Forwarded-For is left as it is."""
        names = {as_bytes(name).lower() for name, _ in headers}
        good = ("Authorization", f"Bearer {self.token}") in headers or any(
            name == "Cookie" and self.admin_cookie and self.admin_cookie in as_bytes(value).decode("latin-1")
            for name, value in headers
        )
        if good and b"x-forwarded-for" not in names:
            address = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            headers = [*headers, ("X-Forwarded-For", address)]
        return headers


# Bodies ----------------------------------------------------------------------------------------------------------

HOLE_IN, WHOLE, MESSAGES = "hole", "whole", "messages"
Fragment = bytes | Callable[[bytes], bytes]  # raw JSON text, or a variation on the valid body


@dataclass(frozen=True)
class BodyKind:
    """A way to spoil a JSON body. `where` the spoiled text goes: in place of one field of a valid body, as the whole
    body, or as its messages (or a function choosing). What it is: one of `values`, or what `make` returns (the text,
    and what it adds to the kind's name)."""

    name: str
    where: str | Callable[[random.Random], str]
    values: tuple[Fragment, ...] = ()
    make: Callable[[random.Random, bytes], tuple[str, bytes]] | None = None


def _huge_string(rng: random.Random, valid: bytes) -> tuple[str, bytes]:
    size = rng.choice([10_000, 65_536, 500_000, 1_000_000, 1_048_576, 1_100_000, 3_000_000, 6_000_000])
    unit = rng.choice(["A", "é", "😀", "\\n", "\\u00e9"])
    text = unit * max(1, size // max(1, len(unit.encode())))
    return f"-{size}", f'"{text}"'.encode()


def _messages_edge(rng: random.Random, valid: bytes) -> tuple[str, bytes]:
    count = rng.choice([0, 1, 1000, 20_000, 100_000])
    message = rng.choice(
        [
            '{"role": "user", "content": "hi"}',
            '{"role": "user"}',
            "{}",
            "null",
            '"text"',
            '{"role": "", "content": ""}',
            '{"role": "tool", "content": [{"type": "image_url"}]}',
        ]
    )
    return f"-{count}", ("[" + ",".join([message] * count) + "]").encode()


_WRONG_TYPE = BodyKind("wrong-type", HOLE_IN, tuple(value.encode() for value in WRONG_VALUES))
BODY_KINDS = (
    BodyKind(
        "invalid-json",
        WHOLE,
        (
            b'{"messages": [',
            b"{'messages': []}",
            b'{"messages": [],}',
            b'{"a" 1}',
            b"{,}",
            b'{"messages": [{"role": "user", "content": "hi"}]} trailing',
            b'{"messages": [{"role": "user", "content": "hi"}]}{}',
            b"nul",
            b"tru",
            b'"unterminated',
            b'{"a": "\\x41"}',
            b'{"a": "\\u12"}',
            b'{"a": 01}',
            b'{"a": .5}',
            b'{"a": +1}',
            b'{"a": 0x10}',
            lambda valid: b"\xef\xbb\xbf" + valid,
            lambda valid: b"\x00" + valid,
            lambda valid: valid.replace(b":", b"=", 1),
            b'{"a": "tab\there"}',
        ),
    ),
    BodyKind("truncated-json", WHOLE, make=lambda rng, valid: ("", valid[: rng.randint(1, max(1, len(valid) - 1))])),
    BodyKind("huge-string", HOLE_IN, make=_huge_string),
    BodyKind(
        "surrogate-escape",
        HOLE_IN,
        (
            b'"\\ud800"',
            b'"abc\\udfff"',
            b'"\\udc00\\ud800"',
            b'"\\uD834x"',
            b'"ok \\ud83d\\ude00"',
            b'{"\\ud800": 1}',
            b'["\\udbff"]',
        ),
    ),
    BodyKind("surrogate-raw", HOLE_IN, (b'"\xed\xa0\x80"', b'"a\xed\xbf\xbfb"', b'{"\xed\xa0\x80": 1}')),
    BodyKind("bad-utf8", HOLE_IN, (b'"\xff\xfe"', b'"\xc0\x80"', b'"\xf4\x90\x80\x80"', b'"\xe2\x82"', b'"\x80"')),
    BodyKind(
        "nan-infinity",
        HOLE_IN,
        (
            b"NaN",
            b"Infinity",
            b"-Infinity",
            b"1e400",
            b"-1e400",
            b"1e-400",
            b"-0",
            b"9" * 5000,
            b"1.7976931348623157e308",
            b"[NaN]",
            b'{"x": Infinity}',
            b"123456789012345678901234567890",
        ),
    ),
    BodyKind(
        "deep-nesting", lambda rng: WHOLE if rng.random() < 0.3 else HOLE_IN, make=lambda rng, valid: ("", _deep(rng))
    ),
    _WRONG_TYPE,
    _WRONG_TYPE,
    BodyKind("messages-edge", MESSAGES, make=_messages_edge),
    BodyKind("non-object", WHOLE, (b"[]", b'"text"', b"1", b"null", b"true", b"", b"   ", b"\n", b"[{}]")),
    BodyKind(
        "random-bytes", WHOLE, make=lambda rng, valid: ("", rng.randbytes(rng.choice([1, 16, 512, 4096, 70_000])))
    ),
    BodyKind("valid", WHOLE, make=lambda rng, valid: ("", valid)),
)


def hostile_body(rng: random.Random, base: dict[str, Any], paths: list[tuple[Any, ...]]) -> tuple[str, bytes]:
    """(the kind's name, the body): `base` spoiled by a kind of BODY_KINDS, at one of `paths` if in a field."""
    valid = json.dumps(base, ensure_ascii=False).encode()
    kind = rng.choice(BODY_KINDS)
    path = rng.choice(paths)
    where = kind.where(rng) if callable(kind.where) else kind.where
    if kind.make is not None:
        suffix, raw = kind.make(rng, valid)
    else:
        value = rng.choice(kind.values)
        suffix, raw = "", value(valid) if callable(value) else value
    if where == WHOLE:
        return kind.name + suffix, raw
    return kind.name + suffix, _with_hole(base, ("messages",) if where == MESSAGES else path, raw)


@dataclass(frozen=True)
class BodyTarget:
    method: str
    path: str
    admin: bool  # with the admin token
    base: dict[str, Any]
    holes: list[tuple[Any, ...]]


def _completion_target(cases: HostileCases, rng: random.Random) -> BodyTarget:
    return BodyTarget("POST", rng.choice(COMPLETIONS), rng.random() < 0.2, cases.chat_body(rng), HOLE_PATHS)


def _admin_target(path: Callable[[random.Random, dict[str, Any]], str], method: str = "POST", file: bool = False):
    """A target of the admin API: a document (or the whole knowledge file holding one), mostly with the token."""

    def target(cases: HostileCases, rng: random.Random) -> BodyTarget:
        admin = rng.random() < 0.8
        document = cases.admin_document(rng)
        where = path(rng, document)
        if not file:
            return BodyTarget(method, where, admin, document, ADMIN_HOLE_PATHS)
        document.pop("version")
        holes = [("documents",), ("documents", 0), ("documents", 0, "id"), ("documents", 0, "content")]
        return BodyTarget(method, where, admin, {"version": 1, "documents": [document]}, holes)

    return target


BODY_TARGETS = (
    (0.80, _completion_target),
    (0.88, _admin_target(lambda rng, document: "/admin/api/knowledge")),
    (0.96, _admin_target(lambda rng, doc: f"/admin/api/knowledge/{rng.choice(['connect-agora', doc['id']])}", "PUT")),
    (1.00, _admin_target(lambda rng, document: "/admin/api/knowledge.json", "PUT", file=True)),
)


def json_body_case(cases: HostileCases, rng: random.Random) -> Case:
    target = _pick(rng, BODY_TARGETS)(cases, rng)
    kind, body = hostile_body(rng, target.base, target.holes)
    headers = cases.finish_headers(rng, cases.headers(rng, admin=target.admin))
    request = build_request(target.method, target.path, headers, body)
    return Case.one(f"body:{kind}", request, target.method, note=f"{target.method} {target.path}")


URLENCODED = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class FormVariant:
    """A broken form for the sign-in form (POST /admin) or the upload form: `make` gives (content type, body) from
    the generator and the admin token; `encodings` a Content-Encoding to claim, one of them."""

    name: str
    make: Callable[[random.Random, bytes], tuple[str, bytes]]
    encodings: tuple[str, ...] = ()


FORMS = (
    FormVariant("multipart-no-boundary", lambda rng, token: ("multipart/form-data", b"token=x")),
    FormVariant("multipart-garbage", lambda rng, token: ("multipart/form-data; boundary=zz", rng.randbytes(200))),
    FormVariant(
        "multipart-no-final-boundary",
        lambda rng, token: (lambda kind, body: (kind, body[: -rng.randint(3, 20)]))(
            *multipart([("token", b"x", None, None)])
        ),
    ),
    FormVariant("urlencoded-gzip", lambda rng, token: (URLENCODED, b"token=x"), ("gzip", "br", "identity")),
    FormVariant("urlencoded-bad-utf8", lambda rng, token: (URLENCODED, b"token=%ff%fe&a=%ED%A0%80")),
    FormVariant("urlencoded-wrong-token", lambda rng, token: (URLENCODED, b"token=wrong")),
    FormVariant("urlencoded-right-token", lambda rng, token: (URLENCODED, b"token=" + token)),
    FormVariant("multipart-right-token", lambda rng, token: multipart([("token", token, None, None)])),
    FormVariant("empty", lambda rng, token: (URLENCODED, b"")),
)


def form_case(cases: HostileCases, rng: random.Random) -> Case:
    path = rng.choice(["/admin", "/admin/", "/admin/api/audio"])
    variant = rng.choice(FORMS)
    content_type, body = variant.make(rng, cases.token.encode())
    headers: list[Header] = [("Host", cases.host)]
    if variant.encodings:
        headers.append(("Content-Encoding", rng.choice(variant.encodings)))
    headers.append(("Content-Type", content_type))
    if path == "/admin/api/audio":
        headers.append(("Authorization", f"Bearer {cases.token}"))
    request = build_request("POST", path, cases.finish_headers(rng, headers), body)
    return Case.one(f"body:form-{variant.name}", request, note=f"POST {path} ({content_type[:40]}, {variant.name})")


UPLOAD_NAMES = ["fuzz-clip", "../evil", "..", "a" * 65, "ünï", "", "x/y", "%00", "-lead", "ok_1"]
UPLOAD_FILENAMES = ["x.wav", "../../etc/passwd.wav", "evil.pcm", "", "a\x00b.wav", "é.wav", "noext"]
UPLOAD_TRANSCRIPTS = [b"hello", b"", b"\xed\xa0\x80", b"\xff" * 5, b"t" * 20_000, b"  "]


def upload_case(cases: HostileCases, rng: random.Random) -> Case:
    """Hostile multipart uploads to the audio library."""
    pcm = (np.sin(np.arange(1600) / 3.0) * 4000).astype("<i2")
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    wav = buffer.getvalue()
    name = rng.choice(UPLOAD_NAMES)
    filename = rng.choice(UPLOAD_FILENAMES)
    data = rng.choice(
        [wav, wav[:44], wav[:30], rng.randbytes(500), b"", b"RIFF" + rng.randbytes(200), b"\x01" * 3, *odd_audio()]
    )
    transcript = rng.choice(UPLOAD_TRANSCRIPTS)
    fields = [("name", name.encode(), None, None), ("transcript", transcript, None, None)]
    if rng.random() < 0.9:
        fields.append(("file", data, filename, rng.choice(["audio/wav", "application/octet-stream", None])))
    if rng.random() < 0.3:
        fields.append(("activate", rng.choice([b"true", b"1", b"\xff", b"maybe"]), None, None))
    content_type, body = multipart(fields)
    content_type = rng.choice(
        [content_type] * 6 + ["multipart/form-data", "multipart/form-data; boundary=", "text/plain"]
    )
    if rng.random() < 0.15:
        body = body[: rng.randint(0, len(body))]
    headers = cases.finish_headers(rng, cases.headers(rng, content_type=content_type, admin=rng.random() < 0.85))
    request = build_request("POST", "/admin/api/audio", headers, body)
    return Case.one("body:multipart-upload", request, note="POST /admin/api/audio")


BODY_CATEGORIES = ((0.08, upload_case), (0.13, form_case), (1.0, json_body_case))


def body_case(cases: HostileCases, rng: random.Random) -> Case:
    return _pick(rng, BODY_CATEGORIES)(cases, rng)


# Headers ---------------------------------------------------------------------------------------------------------


@dataclass
class Draft:
    """A request on its way to being hostile: what a header kind may change."""

    cases: HostileCases
    method: str
    path: str
    headers: list[Header]
    body: bytes
    label: str
    length: str | bytes | None = "auto"  # as build_request takes it
    linger: float = 0.0  # > 0: no answer awaited (the server may wait for more), whatever comes read for so long


@dataclass(frozen=True)
class HeaderKind:
    """A header set to one of `values` ({host}, {port} and {token} filled in; None sends none), the request's own
    removed first when `replaces`; with no `header`, each value is a whole (name, value) line. `then` changes what
    else the kind needs (a path, a second header); `label` names the case by the value. A kind that is more than one
    header is made by `make` instead, which may return a Case of its own."""

    name: str
    header: str | None = None
    values: tuple[Any, ...] = ()
    replaces: bool = False
    then: Callable[[Draft, random.Random], None] | None = None
    label: Callable[[Any], str] | None = None
    make: Callable[[Draft, random.Random], Case | None] | None = None


@dataclass(frozen=True)
class BadLength:
    """A Content-Length that disagrees with the body: `length` the header's value ("auto" the right one, None none;
    a function of the body's length when it depends on it), `duplicate` a second header's; `linger` when the server
    may rightly wait for more body."""

    name: str
    length: str | Callable[[int, random.Random], str] | None
    duplicate: Callable[[int], str] | None = None
    linger: float = 0.0


_UNPARSABLE_LENGTHS = ("-1", "abc", "1e3", "+5", " 5", "5 5", "0x10", "99999999999999999999999")
BAD_LENGTHS = (
    *(BadLength(value, value, linger=0.5) for value in _UNPARSABLE_LENGTHS),  # an answer welcome, a wait no defect
    BadLength("dup-same", "auto", duplicate=lambda size: str(size)),
    BadLength("dup-diff", "auto", duplicate=lambda size: str(size + 1)),
    BadLength("shorter", lambda size, rng: str(max(0, size - rng.randint(1, 10)))),  # the rest reads as a request
    BadLength("longer", lambda size, rng: str(size + rng.randint(1, 1000)), linger=0.3),  # the server waits for more
    BadLength("empty", ""),
    BadLength("missing", None),
)


def _content_length(draft: Draft, rng: random.Random) -> None:
    if draft.method != "POST":  # a length needs a body to disagree with
        draft.method, draft.path, draft.body = (
            "POST",
            rng.choice(COMPLETIONS),
            json.dumps(draft.cases.chat_body(rng)).encode(),
        )
    bad = rng.choice(BAD_LENGTHS)
    draft.label = f"content-length:{bad.name}"
    if bad.duplicate is not None:
        draft.headers.append(("Content-Length", bad.duplicate(len(draft.body))))
    draft.length = bad.length(len(draft.body), rng) if callable(bad.length) else bad.length
    draft.linger = bad.linger


def _huge_header(draft: Draft, rng: random.Random) -> None:
    size = rng.choice([8_000, 60_000, 66_000, 200_000])
    name = rng.choice("X-Fuzz User-Agent Cookie Authorization X-Request-Id Origin Accept".split())
    draft.headers.append((name, ("Bearer " if name == "Authorization" else "") + "v" * size))
    draft.label = f"huge-header-{size}"


def _many_headers(draft: Draft, rng: random.Random) -> None:
    count = rng.choice([100, 1000, 5000])
    draft.headers += [(f"X-Fuzz-{n}", "v") for n in range(count)]
    draft.label = f"many-headers-{count}"


def _chunked(draft: Draft, rng: random.Random) -> Case:
    path = draft.path if draft.method == "POST" else rng.choice(COMPLETIONS)
    return chunked_case(draft.cases, rng, path, draft.headers, draft.body)


def _maybe_preflight(draft: Draft, rng: random.Random) -> None:
    if rng.random() < 0.3:
        draft.method, draft.body, draft.length = "OPTIONS", b"", None
        draft.headers.append(("Access-Control-Request-Method", "POST"))


def _maybe_forwarded_proto(draft: Draft, rng: random.Random) -> None:
    if rng.random() < 0.5:
        draft.headers.append(("X-Forwarded-Proto", rng.choice(["https", "gopher", "https, http", "", "HTTPS"])))


def _to_admin(*paths: str) -> Callable[[Draft, random.Random], None]:
    """The request goes to one of `paths`, or stays where it was."""

    def then(draft: Draft, rng: random.Random) -> None:
        draft.path = rng.choice([draft.path, *paths])

    return then


def _maybe_second_request_id(draft: Draft, rng: random.Random) -> None:
    if rng.random() < 0.3:
        draft.headers.append(("X-Request-Id", "second"))


def _maybe_own_origin(draft: Draft, rng: random.Random) -> None:
    if rng.random() < 0.5:
        draft.headers.append(("Origin", f"http://{draft.cases.host}"))


def _cookie_then(draft: Draft, rng: random.Random) -> None:
    if rng.random() < 0.5:
        draft.headers.append(("X-XSRFToken", rng.choice(["2|aa|bb|1", "garbage", ""])))
    _to_admin("/admin", "/admin/api/knowledge", "/admin/api/status")(draft, rng)


def _upgrade(draft: Draft, rng: random.Random) -> None:
    draft.headers.append(("Upgrade", rng.choice(["websocket", "h2c", "garbage"])))


_CONTENT_LENGTH = HeaderKind("content-length", make=_content_length)
_CHUNKED = HeaderKind("chunked", make=_chunked)
_AUTHORIZATION = HeaderKind(
    "authorization",
    "Authorization",
    (
        "Basic YWRtaW46YWRtaW4=",
        "Bearer",
        "Bearer ",
        "bearer {token}",
        "Bearer {token} extra",
        "Token {token}",
        "Bearer " + "A" * 10_000,
        b"Bearer \xff\xfe",
        "Digest username=x",
        "Bearer  {token}",
        "BEARER {token}",
        "Bearer \u00e9t\u00e9",
        "Bearer null",
        " ",
        "",
    ),
    replaces=True,
    then=_to_admin("/admin/api/status", "/admin/api/knowledge", "/admin", "/admin/ws/logs"),
)
HEADER_KINDS = (
    _CONTENT_LENGTH,
    _CONTENT_LENGTH,
    HeaderKind("huge-header", make=_huge_header),
    HeaderKind("many-headers", make=_many_headers),
    _CHUNKED,
    _CHUNKED,
    HeaderKind(
        "origin",
        "Origin",
        (
            "https://evil.example",
            "null",
            "http://{host}",
            "http://localhost:{port}",
            "http://[::1",
            "ftp://x",
            "http://evil.example:99999",
            "https://ünï.example",
            "garbage",
            "",
            "http://a/b/c",
        ),
        then=_maybe_preflight,
        label=lambda origin: f"origin:{origin[:24]}",
    ),
    HeaderKind(
        "x-forwarded-for",
        "X-Forwarded-For",
        (
            "garbage",
            "1.2.3.4, evil, 5.6.7.8",
            "::1",
            "999.999.999.999",
            ", , ,",
            "",
            "10.0.0.1," * 2000,
            b"\xff\xfe",
            "ünï",
            "1.2.3.4:80",
            "[::1]:80",
            "fe80::1%eth0",
            "0.0.0.0/0",
        ),
        then=_maybe_forwarded_proto,
    ),
    _AUTHORIZATION,
    _AUTHORIZATION,
    HeaderKind(
        "x-request-id",
        "X-Request-Id",
        (
            b"a\x01b",
            b"a\x7fb",
            "x" * 200,
            "ünïcødé".encode(),
            "",
            " ",
            "id with spaces",
            b"\x00",
            b"a\tb",
            "req-ok_1.2:3",
            "<script>",
            "x" * 128,
            "x" * 129,
            b"a\x1bb",
        ),
        then=_maybe_second_request_id,
    ),
    HeaderKind(
        "host",
        "Host",
        (None, "evil.example", "", "[::1", "a" * 1000, f"{HOST}:99999", "ünï.example", "h h"),
        replaces=True,
        then=_maybe_own_origin,
    ),
    HeaderKind(
        "cookie",
        "Cookie",
        (
            "llm_admin=garbage",
            "llm_admin=2|1:0|10:1700000000|9:llm_admin|4:YQ==|" + "0" * 64,
            "_xsrf=2|aa|bb|1",
            "=;=;=",
            "a" * 10_000 + "=1",
            'llm_admin="unterminated',
            b"c=\xff",
        ),
        then=_cookie_then,
    ),
    HeaderKind("expect", "Expect", ("100-continue", "200-ok", "garbage")),
    HeaderKind("connection-upgrade", "Connection", ("Upgrade", "keep-alive, Upgrade", "close"), then=_upgrade),
    HeaderKind(
        "malformed-header-line",
        None,
        (
            (b"Bad Header", b"x"),
            (b"NoColon", b""),
            (b" folded", b"continuation"),
            (b"X-\xff", b"v"),
            (b"", b"empty name"),
            (b"X-Fuzz", b"a\rb"),
            (b"X-Fuzz", b"a\x00b"),
        ),
    ),
    HeaderKind(
        "content-type",
        "Content-Type",
        (
            "text/plain",
            "application/json; charset=latin-1",
            "",
            "multipart/form-data",
            URLENCODED,
            "application/json; boundary=" + "x" * 5000,
        ),
        replaces=True,
    ),
)


def _set_header(kind: HeaderKind, draft: Draft, rng: random.Random) -> None:
    if kind.replaces:
        draft.headers = [header for header in draft.headers if header[0] != kind.header]
    value = draft.cases.fill(rng.choice(kind.values))
    if kind.header is None:
        draft.headers.append(value)
    elif value is not None:
        draft.headers.append((kind.header, value))
    if kind.label is not None:
        draft.label = kind.label(value)
    if kind.then is not None:
        kind.then(draft, rng)


def header_case(cases: HostileCases, rng: random.Random) -> Case:
    method, path = rng.choice([("POST", rng.choice(COMPLETIONS))] * 3 + [("GET", rng.choice(ROUTES))])
    admin = rng.random() < 0.5
    body = json.dumps(cases.chat_body(rng)).encode() if method == "POST" else b""
    draft = Draft(cases, method, path, cases.headers(rng, admin=admin), body, label="")
    kind = rng.choice(HEADER_KINDS)
    draft.label = kind.name
    made = kind.make(draft, rng) if kind.make is not None else _set_header(kind, draft, rng)
    if made is not None:
        return made
    headers = cases.finish_headers(rng, draft.headers)
    data = build_request(draft.method, draft.path, headers, draft.body, length=draft.length)
    note = f"{draft.method} {draft.path} ({draft.label})"
    if draft.linger:
        return Case(f"header:{draft.label}", [(data, 0.0)], [], linger=draft.linger, note=note)
    return Case.one(f"header:{draft.label}", data, draft.method, note=note, until_close=draft.length != "auto")


@dataclass(frozen=True)
class ChunkedVariant:
    """A chunked body: `frame` makes it from (the body, the body rightly framed in two chunks, the generator);
    `linger` when the server may rightly wait for more; `with_length` adds a Content-Length too."""

    name: str
    frame: Callable[[bytes, bytes, random.Random], bytes]
    linger: float = 0.0
    with_length: bool = False


def _oversized(body: bytes, good: bytes, rng: random.Random) -> bytes:
    piece = b"A" * 65536
    return b"".join(b"10000\r\n" + piece + b"\r\n" for _ in range(rng.choice([20, 40, 100]))) + b"0\r\n\r\n"


TRANSFER_ENCODINGS = ["chunked"] * 5 + ["gzip, chunked", "chunked, gzip", "Chunked"]
CHUNKED = (
    ChunkedVariant("good", lambda body, good, rng: good),
    ChunkedVariant("bad-size", lambda body, good, rng: b"zz\r\n" + body + b"\r\n0\r\n\r\n"),
    ChunkedVariant("negative", lambda body, good, rng: b"-1\r\n" + body + b"\r\n0\r\n\r\n"),
    ChunkedVariant("huge-size", lambda body, good, rng: b"ffffffffffffffffffff\r\n" + body, linger=0.5),
    ChunkedVariant(
        "short-chunk", lambda body, good, rng: b"%x\r\n" % (len(body) + 100) + body + b"\r\n0\r\n\r\n", linger=0.5
    ),
    ChunkedVariant("no-final-chunk", lambda body, good, rng: b"%x\r\n%s\r\n" % (len(body), body), linger=0.5),
    ChunkedVariant("with-content-length", lambda body, good, rng: good, with_length=True),
    ChunkedVariant("oversized", _oversized),
    ChunkedVariant(
        "extension", lambda body, good, rng: b"%x;name=value\r\n%s\r\n0;x\r\nTrailer: x\r\n\r\n" % (len(body), body)
    ),
)


def chunked_case(cases: HostileCases, rng: random.Random, path: str, headers: list[Header], body: bytes) -> Case:
    headers = [*headers, ("Transfer-Encoding", rng.choice(TRANSFER_ENCODINGS))]
    variant = rng.choice(CHUNKED)
    half = len(body) // 2
    good = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])
    if variant.with_length:
        headers.append(("Content-Length", str(len(body))))
    data = variant.frame(body, good, rng)
    request = build_request("POST", path, cases.finish_headers(rng, headers), length=None) + data
    note = f"POST {path} (chunked:{variant.name})"
    if variant.linger:
        return Case(f"header:chunked:{variant.name}", [(request, 0.0)], [], linger=variant.linger, note=note)
    return Case.one(f"header:chunked:{variant.name}", request, note=note)


# Framing ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Framed:
    """A valid completion request, for a framing kind to take apart."""

    cases: HostileCases
    kind: str
    path: str
    headers: list[Header]
    body: bytes
    full: bytes  # the request as bytes

    @property
    def name(self) -> str:
        return f"framing:{self.kind}"

    @property
    def note(self) -> str:
        return f"POST {self.path} ({self.kind})"

    @property
    def head_end(self) -> int:
        return self.full.index(b"\r\n\r\n") + 4

    def unanswered(self, data: bytes, linger: float = 0.0) -> Case:
        """Bytes after which no answer is awaited (whatever comes within `linger` is read)."""
        return Case(self.name, [(data, 0.0)], [], linger=linger, note=self.note)

    def one(self, data: bytes, method: str = "POST", **kwargs: Any) -> Case:
        return Case.one(self.name, data, method, note=self.note, **kwargs)


def _pipelined(framed: Framed, rng: random.Random) -> Case:
    cases, headers = framed.cases, framed.headers
    requests, methods = [], []
    for _ in range(rng.randint(2, 6)):
        sub = rng.random()
        if sub < 0.3:
            requests.append(build_request("GET", "/healthz", [("Host", cases.host)]))
            methods.append("GET")
        elif sub < 0.6:
            path = rng.choice(COMPLETIONS)
            requests.append(build_request("POST", path, headers, json.dumps(cases.chat_body(rng)).encode()))
            methods.append("POST")
        elif sub < 0.8:
            _, hostile = hostile_body(rng, cases.chat_body(rng), HOLE_PATHS)
            requests.append(build_request("POST", rng.choice(COMPLETIONS), headers, hostile))
            methods.append("POST")
        else:
            requests.append(build_request("HEAD", "/healthz", [("Host", cases.host)]))
            methods.append("HEAD")
    return Case(framed.name, [(b"".join(requests), 0.0)], methods, note=f"pipelined {methods}")


def _body_longer_than_declared(framed: Framed, rng: random.Random) -> Case:
    extra = rng.choice([b"garbage", b"\r\n\r\n", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", rng.randbytes(100)])
    # The extra bytes read as the start of another request: answered if they make one, else waited on.
    return Case(framed.name, [(framed.full + extra, 0.0)], ["POST"], linger=0.5, note=framed.note)


def _byte_by_byte(framed: Framed, rng: random.Random) -> Case:
    body = json.dumps(framed.cases.chat_body(rng)).encode()
    small = build_request("POST", "/chat/completions", framed.headers, body)
    cuts = sorted(rng.sample(range(1, len(small)), min(20, len(small) - 1)))
    pieces = [(small[a:b], 0.005) for a, b in zip([0, *cuts], [*cuts, len(small)], strict=True)]
    return Case(framed.name, pieces, ["POST"], note=framed.note)


def _version(*versions: str) -> Callable[[Framed, random.Random], Case]:
    """The request with one of these HTTP versions (one version: no choice made)."""

    def build(framed: Framed, rng: random.Random) -> Case:
        version = versions[0] if len(versions) == 1 else rng.choice(versions)
        data = build_request("POST", framed.path, framed.headers, framed.body, version=version)
        return framed.one(data, until_close=True)

    return build


def _absolute_uri(framed: Framed, rng: random.Random) -> Case:
    host, path = framed.cases.host, framed.path
    target = rng.choice([f"http://{host}{path}", f"http://evil.example{path}", "http://[::1/x"])
    return framed.one(build_request("POST", target, framed.headers, framed.body))


def _long_uri(framed: Framed, rng: random.Random) -> Case:
    size = rng.choice([5_000, 60_000, 70_000, 300_000])
    request = build_request("GET", "/healthz?" + "a" * size, [("Host", framed.cases.host)])
    return Case.one(f"{framed.name}-{size}", request, "GET", note=framed.note, until_close=True)


def _close_mid_stream(framed: Framed, rng: random.Random) -> Case:
    body = json.dumps({**framed.cases.chat_body(rng), "stream": True}).encode()
    request = build_request("POST", framed.path, framed.headers, body)
    return Case(framed.name, [(request, rng.uniform(0.0, 0.05))], [], note=framed.note)


def _websocket(framed: Framed, rng: random.Random) -> Case:
    cases = framed.cases
    headers: list[Header] = [
        ("Host", cases.host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", rng.choice(["13", "8", "garbage"])),
        ("Sec-WebSocket-Key", rng.choice(["dGhlIHNhbXBsZSBub25jZQ==", "bad", ""])),
    ]
    if rng.random() < 0.7:
        headers.append(("Authorization", f"Bearer {cases.token}"))
    if rng.random() < 0.3:
        headers.append(("Origin", rng.choice(["https://evil.example", f"http://{cases.host}"])))
    headers = cases.finish_headers(rng, headers)
    frame = rng.choice([rng.randbytes(64), b"\x81\x05hello", b"\x88\x00", b"\x89\xff" + b"\x00" * 8])
    pieces = [(build_request("GET", "/admin/ws/logs", headers), 0.05), (frame, 0.05)]
    return Case(framed.name, pieces, ["GET"], linger=0.2, note="GET /admin/ws/logs (websocket)")


def _slow_headers(framed: Framed, rng: random.Random) -> Case:
    cut = framed.full.index(b"\r\n\r\n")
    return Case(framed.name, [(framed.full[:cut], 0.3), (framed.full[cut:], 0.0)], ["POST"], note=framed.note)


FRAMING = (
    ("partial-request-line", lambda f, rng: f.unanswered(f.full[: rng.randint(1, 15)], linger=0.2)),
    ("partial-headers", lambda f, rng: f.unanswered(f.full[: rng.randint(16, f.head_end - 4)], linger=0.2)),
    ("close-mid-body", lambda f, rng: f.unanswered(f.full[: rng.randint(f.head_end, len(f.full) - 1)])),
    (
        "body-shorter-then-wait",
        lambda f, rng: f.unanswered(f.full[: rng.randint(f.head_end, len(f.full) - 1)], linger=0.5),
    ),
    ("body-longer-than-declared", _body_longer_than_declared),
    ("pipelined", _pipelined),
    ("pipelined", _pipelined),
    ("byte-by-byte", _byte_by_byte),
    ("lf-only", lambda f, rng: f.one(build_request("POST", f.path, f.headers, f.body, eol=b"\n"))),
    ("http-1.0", _version("HTTP/1.0")),
    ("http-0.9", lambda f, rng: Case(f.name, [(b"GET /healthz\r\n\r\n", 0.0)], ["GET"], until_close=True, note=f.note)),
    ("http-2.0", _version("HTTP/2.0")),
    ("bad-version", _version(*"HTTP/1.2 HTTP/9 HTTPS/1.1 http/1.1".split())),
    ("absolute-uri", _absolute_uri),
    ("asterisk", lambda f, rng: f.one(build_request("OPTIONS", "*", [("Host", f.cases.host)]), "OPTIONS")),
    ("leading-blank-lines", lambda f, rng: f.one(b"\r\n\r\n" + f.full, until_close=True)),
    ("nul-in-line", lambda f, rng: f.one(f.full.replace(b" HTTP/1.1", b"\x00 HTTP/1.1", 1), until_close=True)),
    ("long-uri", _long_uri),
    ("close-mid-stream", _close_mid_stream),
    ("websocket", _websocket),
    ("slow-headers", _slow_headers),
    (
        "space-in-target",
        lambda f, rng: f.one(
            build_request("GET", "/admin/api/audio/a b/activate", [("Host", f.cases.host)]), "GET", until_close=True
        ),
    ),
)


def framing_case(cases: HostileCases, rng: random.Random) -> Case:
    body = json.dumps(cases.chat_body(rng)).encode()
    path = rng.choice(COMPLETIONS)
    headers = cases.finish_headers(rng, cases.headers(rng, admin=False))
    full = build_request("POST", path, headers, body)
    kind, build = rng.choice(FRAMING)
    return build(Framed(cases, kind, path, headers, body, full), rng)


# Methods and paths -----------------------------------------------------------------------------------------------


def method_case(cases: HostileCases, rng: random.Random) -> Case:
    method, path = rng.choice(METHODS), rng.choice(ROUTES)
    admin = rng.random() < 0.6
    body = b""
    if method.upper() in ("POST", "PUT", "PATCH") or rng.random() < 0.2:
        body = rng.choice(
            [json.dumps(cases.chat_body(rng)).encode(), b"{}", json.dumps(cases.admin_document(rng)).encode(), b""]
        )
    headers = cases.finish_headers(rng, cases.headers(rng, admin=admin))
    if rng.random() < 0.2:
        headers.append(("Origin", rng.choice(["https://evil.example", f"http://{cases.host}"])))
        headers.append(("Access-Control-Request-Method", rng.choice(METHODS)))
    data = build_request(method, path, headers, body)
    return Case.one(f"method:{method}", data, method.upper(), note=f"{method} {path}", until_close=method == "CONNECT")


PATH_TEMPLATES = (
    "/static/{} /static/js/{} /admin/api/audio/{} /admin/api/audio/{}.wav /admin/api/audio/{}/activate "
    "/admin/api/knowledge/{} /admin/api/{} /{} /admin/api/retrieval?q={}&k=3 /admin/api/retrieval?q=agora&k={} "
    "/admin?token={} /static/{}?v={}"
).split()


def path_case(cases: HostileCases, rng: random.Random) -> Case:
    name = rng.choice(TRAVERSALS)
    template = rng.choice(PATH_TEMPLATES)
    target = template.replace("{}", name)
    method = rng.choice(["GET"] * 6 + "HEAD DELETE POST PUT".split())
    admin = rng.random() < 0.6
    body = json.dumps(cases.admin_document(rng)).encode() if method in ("POST", "PUT") else b""
    headers = cases.finish_headers(rng, cases.headers(rng, admin=admin))
    data = build_request(method, target, headers, body)
    kind = f"path:{template.split('{}')[0]}"
    return Case.one(kind, data, method, note=f"{method} {target[:200]}", until_close=len(target) > 60_000)


CATEGORIES = ((0.32, body_case), (0.54, header_case), (0.68, framing_case), (0.82, method_case), (1.0, path_case))
