"""An admin session as a browser holds it: the signed cookie, the XSRF cookie and token; or a bearer token."""

from __future__ import annotations

import json
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPResponse


def cookies_of(response: HTTPResponse) -> dict[str, str]:
    jar: dict[str, str] = {}
    for header in response.headers.get_list("Set-Cookie"):
        cookie = SimpleCookie()
        cookie.load(header)
        jar.update({name: morsel.value for name, morsel in cookie.items()})
    return jar


@dataclass
class AdminClient:
    base_url: str
    headers: dict[str, str]

    async def fetch(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None, headers=None):
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if payload is None and method in ("POST", "PUT"):
            payload = b""
        return await AsyncHTTPClient().fetch(
            self.base_url + path,
            method=method,
            body=payload,
            headers={**self.headers, **(headers or {})},
            raise_error=False,
            follow_redirects=False,
            allow_nonstandard_methods=True,
        )


async def sign_in_with_cookie(base_url: str, token: str, with_xsrf: bool = True) -> AdminClient:
    client = AsyncHTTPClient()
    signed = await client.fetch(f"{base_url}/admin?token={token}", follow_redirects=False, raise_error=False)
    assert signed.code == 303, signed.code
    jar = cookies_of(signed)
    page = await client.fetch(
        base_url + "/admin", headers={"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())}, raise_error=False
    )
    assert page.code == 200
    jar.update(cookies_of(page))
    headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())}
    if with_xsrf:
        headers["X-XSRFToken"] = jar["_xsrf"]
    return AdminClient(base_url, headers)


def bearer(base_url: str, token: str) -> AdminClient:
    return AdminClient(base_url, {"Authorization": f"Bearer {token}"})


def multipart(fields: dict[str, str], file_name: str | None, data: bytes) -> tuple[bytes, str]:
    boundary = "----test-boundary-7MA4YWxkTrZu0gW"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    if file_name is not None:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
