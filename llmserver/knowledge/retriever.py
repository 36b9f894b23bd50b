"""The retriever: an index over the knowledge base's passages, rebuilt on every change, and the search that picks
what the RAG endpoint injects.

The index is a snapshot (passages, their BM25 index, their vectors), replaced whole, so a search never sees half
an edit and needs no lock. Rebuilding keeps the tokens and vectors of passages whose text did not change, so an
edit re-embeds only what changed; vectors are also cached on disk (embeddings.EmbeddingCache). At start the
lexical index is built at once and the vectors in a background thread: until they are ready, retrieval is
lexical only.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .embeddings import Embedder, EmbeddingCache, EmbeddingError
from .fusion import DEFAULT_POLICY, Candidate, FusionPolicy, Signals, rank
from .lexical import LexicalIndex, tokenize
from .passages import Passage, split_document
from .query import RetrievalQuery

logger = logging.getLogger("llmserver.knowledge")

CANDIDATES = 24  # from each ranking, before fusion
INLINE_QUERY_CHARS = 300  # a query longer than this is ranked in a worker thread
EMBED_BATCH = 256  # passages embedded (and cached) at a time
HISTORY_VECTOR_WEIGHT = 0.6  # of the history's vector in the history-weighted query's
MIN_BACKGROUND_SPREAD = 0.03
BACKGROUND_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "background.txt")


def background_sentences() -> list[str]:
    with open(BACKGROUND_FILE, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip() and not line.startswith("#")]


@dataclass(frozen=True)
class IndexSnapshot:
    version: int
    passages: tuple[Passage, ...]
    lexical: LexicalIndex
    vectors: np.ndarray | None  # one row per passage; None: lexical only


@dataclass(frozen=True)
class RankedPassage:
    passage: Passage
    relevance: float
    candidate: Candidate
    injected: bool
    reason: str  # why it was or was not injected

    def to_dict(self) -> dict[str, Any]:
        history = self.candidate.history
        return {
            **self.passage.to_dict(),
            "title": self.passage.title,
            "relevance": round(self.relevance, 3),
            "last": _signals_dict(self.candidate.last),
            "history": None if history is None else _signals_dict(history),
            "injected": self.injected,
            "reason": self.reason,
        }


def _signals_dict(signals: Signals) -> dict[str, float | None]:
    return {
        "bm25": round(signals.bm25, 3),
        "coverage": round(signals.coverage, 3),
        "cosine": None if signals.cosine is None else round(signals.cosine, 3),
        "margin": None if signals.margin is None else round(signals.margin, 2),
    }


@dataclass(frozen=True)
class RetrievalResult:
    query: RetrievalQuery
    ranked: list[RankedPassage]
    semantic: bool  # whether embeddings took part (False: lexical only, by setting or for this request)
    ms: float
    budget: int = 0

    @property
    def injected(self) -> list[Passage]:
        return [item.passage for item in self.ranked if item.injected]

    @property
    def injected_chars(self) -> int:
        return sum(len(passage.text) for passage in self.injected)


@dataclass
class _Memory:
    """What rebuilding reuses: tokens and vectors by passage fingerprint."""

    tokens: dict[str, list[str]] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


class Retriever:
    def __init__(
        self,
        embedder: Embedder | None = None,
        cache: EmbeddingCache | None = None,
        *,
        top_k: int = 6,
        context_chars: int = 2500,
        policy: FusionPolicy = DEFAULT_POLICY,
    ) -> None:
        self.embedder = embedder
        self.cache = cache
        self.top_k = top_k
        self.context_chars = context_chars
        self.policy = policy
        self._snapshot = IndexSnapshot(0, (), LexicalIndex([]), None)
        self._documents: list[Mapping[str, Any]] = []
        self._memory = _Memory()
        self._build_lock = threading.Lock()
        self._background: np.ndarray | None = None  # vectors of background.txt, once the model is ready
        self.semantic_error: str | None = None

    # Building -------------------------------------------------------------------------------------------------

    @property
    def semantic_ready(self) -> bool:
        return self._background is not None and self._snapshot.vectors is not None

    def rebuild(self, documents: Iterable[Mapping[str, Any]], version: int) -> None:
        """Makes the index of `documents` (the enabled ones) current; blocking, so call it from a worker thread.
        Vectors come along once the model is ready (see start_semantic)."""
        documents = [d for d in documents if d.get("enabled", True)]
        with self._build_lock:
            if version < self._snapshot.version:
                return  # a newer state was indexed meanwhile
            self._documents = documents
            self._snapshot = self._build(documents, version)

    def _build(self, documents: Sequence[Mapping[str, Any]], version: int) -> IndexSnapshot:
        passages = tuple(passage for document in documents for passage in split_document(document))
        memory = self._memory
        tokens = {}
        for passage in passages:
            key = passage.fingerprint
            tokens[key] = memory.tokens.get(key) or tokenize(passage.indexed_text)
        memory.tokens = tokens
        lexical = LexicalIndex([tokens[p.fingerprint] for p in passages])
        vectors = self._vectors(passages) if self._background is not None else None
        return IndexSnapshot(version, passages, lexical, vectors)

    def _vectors_for(self, passages: Sequence[Passage], dimensions: int | None) -> None:
        """Puts the vectors of `passages` in memory: from memory, the disk cache, or the model (EmbeddingError)."""
        embedder = self.embedder
        assert embedder is not None
        memory = self._memory
        missing = [key for key in dict.fromkeys(p.fingerprint for p in passages) if key not in memory.vectors]
        if missing and self.cache is not None:
            memory.vectors.update(self.cache.get(embedder.name, missing, dimensions))
        texts = {p.fingerprint: p.indexed_text for p in passages if p.fingerprint not in memory.vectors}
        for start in range(0, len(texts), EMBED_BATCH):  # in batches, each cached as soon as it is made
            batch = dict(itertools.islice(texts.items(), start, start + EMBED_BATCH))
            fresh = dict(zip(batch, embedder.embed(list(batch.values())), strict=True))
            memory.vectors.update(fresh)
            if self.cache is not None:
                self.cache.put(embedder.name, fresh)

    def _vectors(self, passages: Sequence[Passage]) -> np.ndarray | None:
        memory = self._memory
        wanted = [p.fingerprint for p in passages]
        try:
            self._vectors_for(passages, self._dimensions())
        except EmbeddingError as exc:
            logger.warning("passages could not be embedded (%s); lexical retrieval until the next change", exc)
            self.semantic_error = str(exc)
            return None
        memory.vectors = {key: memory.vectors[key] for key in wanted}
        self.semantic_error = None
        if not passages:
            return np.zeros((0, self._dimensions() or 1), dtype=np.float32)
        return np.stack([memory.vectors[key] for key in wanted])

    def _dimensions(self) -> int | None:
        return None if self._background is None else int(self._background.shape[1])

    def start_semantic(self) -> None:
        """Loads the model and embeds every passage (from the cache where it can); blocking. Until it is done,
        retrieval is lexical only; if it fails, retrieval stays lexical and the reason is logged. Edits made
        meanwhile are not held up: the embedding happens outside the lock that rebuilds take."""
        if self.embedder is None:
            return
        started = time.perf_counter()
        try:
            background = self._embed_with_cache(background_sentences())
            self._vectors_for(self._snapshot.passages, int(background.shape[1]))
        except EmbeddingError as exc:
            logger.warning("semantic retrieval is off: %s; retrieval is lexical only", exc)
            self.semantic_error = str(exc)
            return
        with self._build_lock:
            self._background = background
            self._snapshot = self._build(self._documents, self._snapshot.version)  # embeds only later edits
            if self.cache is not None:
                keep = {p.fingerprint for p in self._snapshot.passages}
                keep |= {f"background:{i}" for i in range(len(background))}
                self.cache.keep_only(self.embedder.name, keep)
        logger.info(
            "semantic retrieval ready: %d passages embedded with %s in %.1f s",
            len(self._snapshot.passages),
            self.embedder.name,
            time.perf_counter() - started,
        )

    def _embed_with_cache(self, sentences: list[str]) -> np.ndarray:
        assert self.embedder is not None
        # One sentence embedded afresh: it loads the model, and tells the size of its vectors, so that cached
        # vectors of another size (another model, a damaged cache) are never used.
        probe = self.embedder.embed(sentences[:1])
        keys = [f"background:{i}" for i in range(len(sentences))]
        cached = self.cache.get(self.embedder.name, keys, probe.shape[1]) if self.cache is not None else {}
        if len(cached) == len(keys):
            return np.stack([cached[key] for key in keys])
        vectors = self.embedder.embed(sentences)
        if self.cache is not None:
            self.cache.put(self.embedder.name, dict(zip(keys, vectors, strict=True)))
        return vectors

    # Reading ----------------------------------------------------------------------------------------------------

    @property
    def passage_count(self) -> int:
        return len(self._snapshot.passages)

    def passages_of(self, doc_id: str) -> list[Passage]:
        return [p for p in self._snapshot.passages if p.doc_id == doc_id]

    async def retrieve(self, query: RetrievalQuery) -> RetrievalResult:
        """The ranked candidates for `query` and which of them to inject: relevant enough, best first, at most
        `top_k` of them and `context_chars` characters."""
        started = time.perf_counter()
        snapshot = self._snapshot
        vectors = await self.query_vectors(query) if snapshot.vectors is not None and self.semantic_ready else None
        if len(query.text) + len(query.history) <= INLINE_QUERY_CHARS:
            ranked = self._rank(snapshot, query, vectors)  # well under a millisecond: a thread hop would cost more
        else:
            # Its cost grows with its words: a worker thread keeps the event loop (and every stream) going.
            ranked = await asyncio.to_thread(self._rank, snapshot, query, vectors)
        return RetrievalResult(
            query, ranked, vectors is not None, round((time.perf_counter() - started) * 1000, 3), self.context_chars
        )

    def _rank(
        self, snapshot: IndexSnapshot, query: RetrievalQuery, vectors: tuple[np.ndarray, np.ndarray | None] | None
    ) -> list[RankedPassage]:
        return self.select(snapshot, rank(self.candidates(snapshot, query, vectors), self.policy))

    @property
    def snapshot(self) -> IndexSnapshot:
        return self._snapshot

    async def query_vectors(self, query: RetrievalQuery) -> tuple[np.ndarray, np.ndarray | None] | None:
        assert self.embedder is not None
        if not query.text:
            return None
        if not query.history:
            last = await self.embedder.embed_query(query.text)
            return None if last is None else (last, None)
        # Together, so that a batching embedder makes one call of both.
        last, history = await asyncio.gather(
            self.embedder.embed_query(query.text), self.embedder.embed_query(query.history)
        )
        if last is None:
            return None
        if history is None:
            return last, None
        mixed = last + HISTORY_VECTOR_WEIGHT * history
        return last, mixed / max(float(np.linalg.norm(mixed)), 1e-12)

    def _margins(self, vectors: np.ndarray, query_vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cosines of every passage, and how many background spreads each stands above the background."""
        assert self._background is not None
        cosines = vectors @ query_vector
        background = self._background @ query_vector
        spread = max(float(background.std()), MIN_BACKGROUND_SPREAD)
        return cosines, (cosines - float(background.mean())) / spread

    def candidates(
        self,
        snapshot: IndexSnapshot,
        query: RetrievalQuery,
        vectors: tuple[np.ndarray, np.ndarray | None] | None,
    ) -> list[Candidate]:
        """The passages any of the rankings puts near the top, with the signals of each."""
        if not snapshot.passages or not query.text:
            return []
        lexical = snapshot.lexical
        last_tokens = tokenize(query.text)
        history_tokens = last_tokens + tokenize(query.history) if query.history else None
        bm25_last = lexical.scores(last_tokens)
        bm25_history = lexical.scores(history_tokens) if history_tokens is not None else None
        rankings = [bm25_last] + ([bm25_history] if bm25_history is not None else [])
        cosine_last = margin_last = cosine_history = margin_history = None
        if vectors is not None and snapshot.vectors is not None:
            cosine_last, margin_last = self._margins(snapshot.vectors, vectors[0])
            rankings.append(cosine_last)
            if vectors[1] is not None:
                cosine_history, margin_history = self._margins(snapshot.vectors, vectors[1])
                rankings.append(cosine_history)
        chosen: set[int] = set()
        for number, scores in enumerate(rankings):
            top = min(CANDIDATES, len(scores))
            best = np.argpartition(-scores, top - 1)[:top] if top < len(scores) else np.arange(len(scores))
            lexical_ranking = number < (2 if bm25_history is not None else 1)
            chosen.update(int(i) for i in best if scores[i] > 0 or not lexical_ranking)

        reach = {id(last_tokens): lexical.reach(last_tokens)}
        if history_tokens is not None:
            reach[id(history_tokens)] = lexical.reach(history_tokens)

        def signals(i: int, tokens: list[str], bm25: np.ndarray, cosines, margins) -> Signals:
            return Signals(
                coverage=lexical.coverage(tokens, i),
                margin=None if margins is None else float(margins[i]),
                bm25=float(bm25[i]),
                cosine=None if cosines is None else float(cosines[i]),
                reach=reach[id(tokens)],
            )

        candidates = []
        for i in sorted(chosen):
            last = signals(i, last_tokens, bm25_last, cosine_last, margin_last)
            history = None
            if history_tokens is not None and bm25_history is not None:
                history = signals(i, history_tokens, bm25_history, cosine_history, margin_history)
            candidates.append(Candidate(i, last, history))
        return candidates

    def select(
        self, snapshot: IndexSnapshot, ranked: list[tuple[Candidate, float]], policy: FusionPolicy | None = None
    ) -> list[RankedPassage]:
        policy = policy or self.policy
        best = ranked[0][1] if ranked else 0.0
        semantic = bool(ranked) and ranked[0][0].last.margin is not None
        threshold = policy.threshold if semantic else policy.lexical_threshold
        floor = policy.follower_ratio * best
        result: list[RankedPassage] = []
        chars = injected = 0
        for candidate, relevance in ranked[: max(self.top_k * 3, 10)]:
            passage = snapshot.passages[candidate.position]
            if best < threshold:
                reason = f"the best relevance, {best:.2f}, is below {threshold:g}: nothing answers this"
            elif relevance < floor:
                reason = f"relevance below {policy.follower_ratio:g} of the best"
            elif injected >= self.top_k:
                reason = f"RAG_TOP_K ({self.top_k}) passages already injected"
            elif chars + len(passage.text) > self.context_chars:
                reason = f"over the context budget of {self.context_chars} characters"
            else:
                reason = "injected"
                chars += len(passage.text)
                injected += 1
            result.append(RankedPassage(passage, relevance, candidate, reason == "injected", reason))
        return result
