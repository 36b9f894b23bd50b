"""Lexical ranking: BM25 (bm25s) over passages in English and Chinese, and the coverage of a query's words.

English words are lower-cased, stop words dropped and stemmed (Snowball); numbers written as words become digits
(text2num: "twenty four hour" and "24-hour" meet), as speech recognition writes them; Chinese, Japanese and other
CJK text has no spaces, so each run of CJK characters becomes overlapping character bigrams — the standard choice
for BM25 over Chinese, with no dictionary to load.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from functools import lru_cache

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN
from text_to_num import alpha2digit

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_TOKENS = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+", re.UNICODE)
_CJK_RUN = re.compile(rf"[{_CJK}]")
_NUMBER_WORDS = re.compile(
    r"\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|"
    r"seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|thousand)\b",
    re.IGNORECASE,
)
_STOPWORDS = frozenset(STOPWORDS_EN) | {
    "i", "me", "my", "you", "your", "we", "our", "us", "what", "how", "do", "does", "can", "could", "would", "should",
    "will", "um", "uh", "like", "please", "hi", "hello", "hey", "ok", "okay", "tell", "know", "want", "get", "also",
    "is", "are", "am", "was", "there", "here", "which", "when", "where", "who", "why", "much", "many",
}  # fmt: skip
_stemmer = Stemmer.Stemmer("english")
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG


def _digits(text: str) -> str:
    """Numbers written as words -> digits, only where there are some (alpha2digit is the slow part)."""
    return alpha2digit(text, "en") if _NUMBER_WORDS.search(text) else text


@lru_cache(maxsize=4096)
def _stem(word: str) -> str:
    return _stemmer.stemWord(word)


def tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    for match in _TOKENS.finditer(_digits(text).lower()):
        run = match.group()
        if _CJK_RUN.match(run):
            if len(run) == 1:
                tokens.append(run)
            else:
                tokens.extend(run[i : i + 2] for i in range(len(run) - 1))
        elif run not in _STOPWORDS:
            tokens.append(_stem(run))
    return tokens


class LexicalIndex:
    """An immutable BM25 index over tokenised passages."""

    def __init__(self, corpus: Sequence[list[str]]) -> None:
        self.size = len(corpus)
        self._model = bm25s.BM25()
        self._token_sets = [frozenset(tokens) for tokens in corpus]
        self._vocabulary = frozenset().union(*self._token_sets)
        document_frequency: dict[str, int] = {}
        for tokens in self._token_sets:
            for token in tokens:
                document_frequency[token] = document_frequency.get(token, 0) + 1
        self._document_frequency = document_frequency
        if corpus:
            self._model.index([tokens or [""] for tokens in corpus], show_progress=False)

    def scores(self, query_tokens: Sequence[str]) -> np.ndarray:
        """BM25 of every passage (zeros where no query word occurs)."""
        if not self.size:
            return np.zeros(0, dtype=np.float32)
        ids = self._model.get_tokens_ids(list(query_tokens))
        if not ids:
            return np.zeros(self.size, dtype=np.float32)
        return self._model.get_scores_from_ids(ids).astype(np.float32)

    def coverage(self, query_tokens: Sequence[str], position: int) -> float:
        """The share of the query's distinct words that occur in the passage at `position`: 1.0 when all do.

        Unlike a BM25 score it means the same for a corpus of one passage and of 100,000. A Chinese bigram found
        nowhere in the knowledge base is left out: most such bigrams straddle two words ("店几" in "酒店几点").
        An English word found nowhere counts: it is what the knowledge base does not speak of."""
        distinct = {t for t in set(query_tokens) if t in self._vocabulary or not _CJK_RUN.match(t)}
        if not distinct:
            return 0.0
        weights = {token: self._weight(token) for token in distinct}
        found = sum(weight for token, weight in weights.items() if token in self._token_sets[position])
        return found / sum(weights.values())

    def reach(self, query_tokens: Sequence[str]) -> float:
        """The share of the query's distinct words that the knowledge base holds at all. Near 0 when the question
        is in another language than the passages that could answer it: then coverage says nothing, and only the
        semantic signal can (fusion.py)."""
        distinct = {t for t in set(query_tokens) if t in self._vocabulary or not _CJK_RUN.match(t)}
        if not distinct:
            return 0.0
        return sum(1 for token in distinct if token in self._vocabulary) / len(distinct)

    def _weight(self, token: str) -> float:
        """A word's weight in the coverage: BM25's idf, a word absent from the corpus weighing as one found once.
        In a corpus of one passage every word weighs the same; in a large one, words most passages hold weigh
        little (a hotel's "room"), so they do not make a passage look relevant on their own."""
        frequency = max(1, self._document_frequency.get(token, 0))
        return math.log(1 + (self.size - frequency + 0.5) / (frequency + 0.5))
