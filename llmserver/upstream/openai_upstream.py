"""The upstream LLM over the openai SDK's HTTP client (httpx2 on its aiohttp transport), and the SDK's errors.

A request is built here, not by AsyncOpenAI: the SDK's request building (options, headers, URL, retries' bookkeeping)
cost about 0.3 ms of CPU per request, a fifth of the server's own time per stream, for nothing this relay uses. The
SDK's error types are kept (its status and connection errors, made from the response or the transport's exception),
so the mapping below is the one the SDK's users know. No retries here: the router retries, because only it knows
whether a byte of the response has reached the client.

Streams are relayed as the upstream's own bytes (one SSE payload per chunk): each chunk is parsed once, to check
it and to let the relay read it, but never serialised again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import warnings
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import aiohttp.http_exceptions
import anyio
import httpx2
import openai

from ..protocol.chat_request import include_usage
from ..protocol.chunks import completion_as_chunks
from ..protocol.sse import SSELineReader, dumps
from .protocol import UpstreamChunk, UpstreamError
from .upstreams_file import UpstreamConfig

logger = logging.getLogger("llmserver.upstream")
# aiohttp warns of every request body over 1 MB; the server relays bodies up to MAX_BODY_BYTES as they come, and a
# warning per request would fill the log.
warnings.filterwarnings("ignore", "Sending a large body directly", ResourceWarning)

# Statuses whose meaning the client can act on are passed on; other upstream 4xx too; 5xx become 502.
_KEPT_STATUSES = {400, 401, 403, 404, 409, 413, 422, 429}
_RETRYABLE_STATUSES = {408, 409, 429}  # and every 5xx, as the SDK's own policy has it
_DRAIN_SECONDS = 1.0
_MAX_RETRY_AFTER = 60.0
_MAX_ERROR_BODY = 64 * 1024  # of an error answer, read to find its message
# What the SDK counts as a failed request (not a timeout, not a status): the transport's errors.
_REQUEST_ERRORS = (httpx2.RequestError, ssl.SSLError, anyio.EndOfStream)
_USER_AGENT = f"custom-llm-server openai-python/{openai.__version__}"


def _causes(exc: BaseException) -> list[BaseException]:
    chain, seen = [], exc
    while seen is not None and len(chain) < 16:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def _dropped(exc: BaseException) -> bool:
    """True when the connection closed or was reset before any response: typically a kept-alive connection the
    upstream (or a proxy before it) had closed meanwhile. The aiohttp transport reports it as a connect timeout."""
    return any(
        isinstance(cause, (aiohttp.ServerDisconnectedError, ConnectionResetError, BrokenPipeError))
        for cause in _causes(exc)
    )


def _refused(exc: BaseException) -> bool:
    return any(isinstance(cause, OSError) and not isinstance(cause, TimeoutError) for cause in _causes(exc))


def _retry_after(response: httpx2.Response | None) -> float | None:
    if response is None:
        return None
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            value = float(response.headers.get(header, "")) * scale
        except ValueError:
            continue
        if 0 <= value <= _MAX_RETRY_AFTER:
            return value
    return None


def upstream_error(exc: openai.APIError) -> UpstreamError:
    """Turns an SDK exception into the error the client sees: the upstream's status and message where useful.
    What the SDK or the transport said goes to the log, not to the client."""
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        body = exc.body if isinstance(exc.body, dict) else {}
        message = body.get("message") if isinstance(body.get("message"), str) else None
        message = message or f"The upstream LLM answered HTTP {status}."
        retryable = status in _RETRYABLE_STATUSES or status >= 500
        retry_after = _retry_after(exc.response)
        if status in _KEPT_STATUSES:
            return UpstreamError(
                status,
                message,
                type=body.get("type") if isinstance(body.get("type"), str) else None,
                param=body.get("param") if isinstance(body.get("param"), str) else None,
                code=str(body["code"]) if body.get("code") is not None else "upstream_error",
                retryable=retryable,
                retry_after=retry_after,
            )
        return UpstreamError(
            502,
            f"Upstream error (HTTP {status}): {message}",
            code="upstream_error",
            retryable=retryable,
            retry_after=retry_after,
        )
    logger.warning("upstream call failed: %r", _causes(exc)[-1])
    if _dropped(exc):
        return UpstreamError(
            502,
            "The upstream LLM closed the connection before answering.",
            code="upstream_unreachable",
            retryable=True,
            dropped=True,
        )
    if isinstance(exc, openai.APITimeoutError) and not _refused(exc):
        return UpstreamError(504, "The upstream LLM timed out.", code="upstream_timeout", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamError(502, "The upstream LLM could not be reached.", code="upstream_unreachable", retryable=True)
    return UpstreamError(502, "The upstream LLM call failed.", code="upstream_error")


# What the SDK's aiohttp transport lets through unwrapped when the upstream's HTTP itself is malformed: a bad status
# line, a header too long or without a colon, a bad chunk size, stray bytes where the next response should start.
MALFORMED_HTTP = (aiohttp.ClientResponseError, aiohttp.ClientPayloadError, aiohttp.http_exceptions.HttpProcessingError)


def malformed_http(exc: BaseException, relayed: int = 0) -> UpstreamError:
    logger.warning("the upstream's HTTP is malformed: %s", str(exc).splitlines()[0][:200] if str(exc) else repr(exc))
    return UpstreamError(
        502,
        "The upstream LLM answered with malformed HTTP." if not relayed else "The upstream stream broke off.",
        code="upstream_bad_response" if not relayed else "upstream_stream_broken",
        retryable=not relayed,
    )


def parse_chunk(payload: bytes) -> dict[str, Any]:
    """One streamed payload as a JSON object; an error event or anything that is not a chunk is an UpstreamError."""
    try:
        chunk = json.loads(payload)
    except ValueError:
        raise UpstreamError(502, "The upstream sent a chunk that is not JSON.", code="upstream_bad_chunk") from None
    if not isinstance(chunk, dict):
        raise UpstreamError(502, "The upstream sent a chunk that is not a JSON object.", code="upstream_bad_chunk")
    if "error" in chunk:
        raise stream_error_event(chunk["error"])
    return chunk


def check_tool_calls(completion: dict[str, Any]) -> None:
    """A completion's tool calls must be a list of objects for them to be streamed (or run) as calls."""
    for choice in completion.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if calls is not None and (not isinstance(calls, list) or not all(isinstance(call, dict) for call in calls)):
            raise UpstreamError(
                502,
                "The upstream's message has tool calls that are not a list of objects.",
                code="upstream_bad_response",
            )


def stream_error_event(error: Any) -> UpstreamError:
    """An `{"error": ...}` event in the upstream's stream: its message, as the upstream gave it."""
    if not isinstance(error, dict):
        return UpstreamError(502, "The upstream reported an error.", code="upstream_error")
    message = error.get("message") if isinstance(error.get("message"), str) else "The upstream reported an error."
    code = error.get("code")
    return UpstreamError(
        502,
        message,
        type=error.get("type") if isinstance(error.get("type"), str) else "server_error",
        code=str(code) if code is not None else "upstream_error",
    )


def _caused(error: openai.APIError, cause: BaseException) -> openai.APIError:
    """The SDK's error for a transport failure, with the failure as its cause (read by _dropped and _refused)."""
    error.__cause__ = cause
    return error


async def _status_error(response: httpx2.Response) -> openai.APIStatusError:
    """The SDK's error for a 4xx or 5xx answer: its JSON body's `error` object (or the body), read to 64 KB."""
    text = b""
    try:
        async for data in response.aiter_bytes():
            text += data
            if len(text) > _MAX_ERROR_BODY:
                break
    except (httpx2.HTTPError, *MALFORMED_HTTP):
        pass
    finally:
        await response.aclose()
    try:
        body: Any = json.loads(text[:_MAX_ERROR_BODY])
    except ValueError:
        body = text[:_MAX_ERROR_BODY].decode("utf-8", "replace").strip()
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message") if isinstance(error, dict) else None
    summary = f"Error code: {response.status_code}" + (f" - {message}" if isinstance(message, str) and message else "")
    return openai.APIStatusError(summary, response=response, body=error)


async def _drain_and_close(received: AsyncIterator[bytes], response: httpx2.Response) -> None:
    """Reads what follows [DONE] (the end of the chunked body) so the connection goes back to the pool.

    Closing a response that is not fully read closes its connection, and a new TCP connection per request
    costs more than the whole relay. It runs after the client has its [DONE]; an upstream that keeps the body
    open after [DONE] gets a second, then its connection is closed.
    """
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for _ in received:
                pass
    except Exception:  # the client has its answer; whatever the rest of the body does, only close it
        pass
    finally:
        await response.aclose()


def redact_url(url: str) -> str:
    """The URL without user and password, for logs and the dashboard."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class OpenAIUpstream:
    mode = "openai"

    def __init__(
        self, config: UpstreamConfig, *, connect_timeout: float, read_timeout: float, max_streams: int
    ) -> None:
        """`config`'s own timeouts and stream limit win over the server's (the other arguments)."""
        base_url = config.base_url or "https://api.openai.com/v1"
        self.base_url = redact_url(base_url)  # what is shown; requests keep any credentials in the URL
        self.has_own_key = bool(config.api_key)
        self._draining: set[asyncio.Task] = set()
        parts = urlsplit(base_url)
        self._url = lambda path: urlunsplit(parts._replace(path=parts.path.rstrip("/") + path))
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": _USER_AGENT,
            **config.headers,
        }
        self._own_key = config.api_key
        max_streams = config.max_streams or max_streams
        # aiohttp as the transport: measured several times faster per request than the default under load (httpcore
        # checks every pooled connection with a syscall on each request). Its pool is sized for the streams a process
        # may serve (MAX_STREAMS), so none waits silently for a connection.
        read, connect = config.read_timeout or read_timeout, config.connect_timeout or connect_timeout
        self._http = openai.DefaultAioHttpClient(
            limits=httpx2.Limits(max_connections=max_streams + 50, max_keepalive_connections=min(max_streams, 500)),
            timeout=httpx2.Timeout(read, connect=connect),
        )

    def _headers_for(self, api_key: str | None) -> dict[str, str]:
        """The upstream's own key wins; without one the caller's key is forwarded."""
        key = self._own_key or api_key
        return {**self._headers, "Authorization": f"Bearer {key}"} if key else self._headers

    async def _post(self, path: str, body: dict[str, Any] | None, api_key: str | None) -> httpx2.Response:
        """The upstream's response to a request, its body not read yet; every failure as an UpstreamError."""
        request = self._http.build_request(
            "GET" if body is None else "POST",
            self._url(path),
            headers=self._headers_for(api_key),
            content=None if body is None else dumps(body),
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx2.TimeoutException as exc:
            raise upstream_error(_caused(openai.APITimeoutError(request=request), exc)) from None
        except MALFORMED_HTTP as exc:
            raise malformed_http(exc) from None
        except _REQUEST_ERRORS as exc:
            raise upstream_error(_caused(openai.APIConnectionError(request=request), exc)) from None
        if response.status_code >= 400:
            raise upstream_error(await _status_error(response))
        return response

    async def stream(self, body: dict[str, Any], api_key: str | None) -> AsyncIterator[UpstreamChunk]:
        response = await self._post("/chat/completions", body, api_key)
        if response.headers.get("content-type", "").startswith("application/json"):
            # An upstream that ignored `stream: true` (some proxies and local servers do): its completion, chunked.
            completion = await self._read_completion(response, "answered a streaming request with invalid JSON")
            check_tool_calls(completion)
            for chunk in completion_as_chunks(completion, include_usage(body)):
                yield UpstreamChunk(dumps(chunk), chunk)
            return
        reader = SSELineReader()
        received = response.aiter_bytes()
        finished = False
        relayed = 0
        try:
            async for data in received:
                for payload in reader.feed(data):
                    if payload == b"[DONE]":
                        finished = True
                        task = asyncio.ensure_future(_drain_and_close(received, response))
                        self._draining.add(task)
                        task.add_done_callback(self._draining.discard)
                        return
                    relayed += 1
                    yield UpstreamChunk(payload, parse_chunk(payload))
        except httpx2.TimeoutException:
            raise UpstreamError(
                504, "The upstream LLM stopped sending (read timeout).", code="upstream_timeout", retryable=not relayed
            ) from None
        except MALFORMED_HTTP as exc:
            raise malformed_http(exc, relayed) from None
        except httpx2.HTTPError as exc:
            logger.warning("upstream stream broke after %d chunk(s): %r", relayed, _causes(exc)[-1])
            raise UpstreamError(
                502,
                "The upstream stream broke off.",
                code="upstream_stream_broken",
                retryable=not relayed,
                dropped=not relayed,
            ) from None
        finally:
            if not finished:
                await response.aclose()
        raise UpstreamError(
            502, "The upstream ended the stream without [DONE].", code="upstream_stream_incomplete", retryable=False
        )

    async def _read_completion(self, response: httpx2.Response, problem: str) -> dict[str, Any]:
        try:
            completion = json.loads(await response.aread())
        except httpx2.TimeoutException:
            raise UpstreamError(504, "The upstream LLM timed out.", code="upstream_timeout", retryable=True) from None
        except (ValueError, httpx2.HTTPError, *MALFORMED_HTTP):
            completion = None
        finally:
            await response.aclose()
        if not isinstance(completion, dict):
            raise UpstreamError(502, f"The upstream {problem}.", code="upstream_bad_response")
        return completion

    async def complete(self, body: dict[str, Any], api_key: str | None) -> dict[str, Any]:
        response = await self._post("/chat/completions", body, api_key)
        return await self._read_completion(response, "answered with invalid JSON")

    async def list_models(self, api_key: str | None) -> dict[str, Any]:
        response = await self._post("/models", None, api_key)
        return await self._read_completion(response, "answered the model list with invalid JSON")

    async def aclose(self) -> None:
        while self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)
        await self._http.aclose()
