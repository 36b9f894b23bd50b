"""Hybrid ranking and the relevance decision, from signals that mean the same for one passage and for 100,000.

For each candidate passage the retriever measures, for the last user turn and for the history-weighted query:
- coverage: the share of the query's words the passage holds (lexical; 1.0 when it holds them all);
- margin: how far the passage's cosine similarity to the query stands above the query's similarity to a fixed
  background of unrelated sentences, in standard deviations of that background (semantic).
BM25 and raw cosines rank well but their scale moves with the corpus and the query, so they only gather
candidates; ranking and the decision to inject use coverage and margin. The decision is made per question: when
the best passage is relevant enough, it and the next best come along within the budget (the eval shows the answer
among the first three for 97% of answerable questions, while no per-passage cut-off separates answerable from
unanswerable questions well). The weights and the threshold were chosen on the retrieval eval
(bench/retrieval_eval.py), whose figures the README reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Signals:
    coverage: float  # 0..1
    margin: float | None  # standard deviations above the background; None without embeddings
    bm25: float  # raw, for display and tie-breaking
    cosine: float | None  # raw, for display
    reach: float = 1.0  # the share of the query's words the knowledge base holds at all (the same for every passage)


@dataclass(frozen=True, slots=True)
class Candidate:
    position: int  # in the index snapshot
    last: Signals  # for the last user turn alone
    history: Signals | None  # for the history-weighted query (None: no history)


@dataclass(frozen=True)
class FusionPolicy:
    """How signals become one score, and what score is relevant enough to inject."""

    semantic_weight: float = 0.5  # of the margin against coverage, with embeddings
    margin_scale: float = 3.5  # a margin this large counts as certain (1.0)
    history_weight: float = 0.7  # of the history-weighted query's evidence in the blend with the last turn's own
    threshold: float = 0.2  # the best passage's relevance at or above which the knowledge base answers at all
    lexical_threshold: float = 0.3  # the same without embeddings (coverage alone is weaker evidence)
    follower_ratio: float = 0.3  # the others must reach this share of the best's relevance to come along


DEFAULT_POLICY = FusionPolicy()


def _evidence(signals: Signals, policy: FusionPolicy) -> float:
    if signals.margin is None:
        return signals.coverage
    semantic = min(1.0, max(0.0, signals.margin / policy.margin_scale))
    # Coverage counts as far as the query's words are the knowledge base's words at all: a Chinese question to
    # English passages (or the other way round) can only be judged by meaning.
    lexical_weight = (1 - policy.semantic_weight) * signals.reach
    return (1 - lexical_weight) * semantic + lexical_weight * signals.coverage


def relevance(candidate: Candidate, policy: FusionPolicy = DEFAULT_POLICY) -> float:
    """The passage's relevance, 0..1: its evidence for the last turn, blended with its evidence for the
    history-weighted query (which holds the last turn too). A follow-up without a subject gets evidence from the
    turns it refers to; a standalone question after a change of topic keeps its own, as the old topic's passages
    match its words in neither query."""
    own = _evidence(candidate.last, policy)
    if candidate.history is None:
        return own
    return (1 - policy.history_weight) * own + policy.history_weight * _evidence(candidate.history, policy)


def rank(candidates: Sequence[Candidate], policy: FusionPolicy = DEFAULT_POLICY) -> list[tuple[Candidate, float]]:
    """Candidates with their relevance, best first (BM25 breaks ties)."""
    scored = [(candidate, relevance(candidate, policy)) for candidate in candidates]
    scored.sort(key=lambda pair: (-pair[1], -pair[0].last.bm25))
    return scored
