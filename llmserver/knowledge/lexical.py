"""BM25 ranking (bm25s) over documents in English and Chinese.

English words are lower-cased, stop words dropped and stemmed (Snowball); Chinese, Japanese and other CJK text
has no spaces, so each run of CJK characters becomes overlapping character bigrams — the standard choice for
BM25 over Chinese, with no dictionary to load.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_TOKENS = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+", re.UNICODE)
_STOPWORDS = frozenset(STOPWORDS_EN) | {"i", "me", "my", "you", "your", "we", "our", "what", "how", "do", "does", "can"}
_stemmer = Stemmer.Stemmer("english")
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG


def _is_cjk(token: str) -> bool:
    return bool(re.match(rf"[{_CJK}]", token))


def tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    words: list[str] = []
    for match in _TOKENS.finditer(text.lower()):
        run = match.group()
        if _is_cjk(run):
            if len(run) == 1:
                tokens.append(run)
            else:
                tokens.extend(run[i : i + 2] for i in range(len(run) - 1))
        elif run not in _STOPWORDS:
            words.append(run)
    tokens.extend(_stemmer.stemWords(words))
    return tokens


class BM25Index:
    """An immutable BM25 index over tokenised documents; `search` returns (position, score) pairs, best first."""

    def __init__(self, corpus: Sequence[list[str]]) -> None:
        self.size = len(corpus)
        self._model = bm25s.BM25()
        if corpus:
            self._model.index([tokens or [""] for tokens in corpus], show_progress=False)

    def search(self, query: str, k: int, min_score: float) -> list[tuple[int, float]]:
        if not self.size or k <= 0:
            return []
        ids = self._model.get_tokens_ids(tokenize(query))
        if not ids:
            return []
        scores = self._model.get_scores_from_ids(ids)
        k = min(k, self.size)
        top = np.argpartition(-scores, k - 1)[:k] if k < self.size else np.arange(self.size)
        ranked = sorted(((int(i), float(scores[i])) for i in top), key=lambda pair: -pair[1])
        return [(i, round(score, 4)) for i, score in ranked if score >= min_score and score > 0]
