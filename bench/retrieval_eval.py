"""The retrieval eval: knowledge bases of our own making (bench/eval/*.json), labelled questions by category, and
what the RAG endpoint would inject for each, with lexical, semantic and hybrid retrieval side by side.

    .venv/bin/python -m bench.retrieval_eval             # the table (Markdown), per category and mode
    .venv/bin/python -m bench.retrieval_eval --misses    # and every question the hybrid mode gets wrong
    .venv/bin/python -m bench.retrieval_eval --sweep     # the fusion weights and threshold, searched on the eval

An answerable question counts as found when an injected passage of the answer's document holds the answer's text;
an unanswerable one counts as right when nothing is injected.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from llmserver.knowledge.embeddings import BundledEmbedder, EmbeddingCache
from llmserver.knowledge.fusion import DEFAULT_POLICY, FusionPolicy, rank
from llmserver.knowledge.query import conversation_query
from llmserver.knowledge.retriever import Retriever

EVAL_FOLDER = Path(__file__).parent / "eval"
MODES = ("lexical", "semantic", "hybrid")
ANSWERABLE_TARGET, CATEGORY_TARGET = 0.90, 0.80


@dataclass
class Outcome:
    kb: str
    question: dict
    mode: str
    right: bool
    injected_chars: int
    injected: list[str]


def load_sets() -> list[dict]:
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(EVAL_FOLDER.glob("*.json"))]


def is_right(question: dict, passages) -> bool:
    answer = question["answer"]
    if answer is None:
        return not passages
    return any(p.doc_id == answer["doc"] and answer["contains"] in p.text for p in passages)


def mode_policy(mode: str, policy: FusionPolicy) -> FusionPolicy:
    return replace(policy, semantic_weight=1.0) if mode == "semantic" else policy


class Prepared:
    """A knowledge base indexed once, with each question's candidates measured once: policies are then cheap."""

    def __init__(self, retriever: Retriever, kb: dict) -> None:
        self.retriever = retriever
        self.kb = kb
        self.questions: list[tuple[dict, list]] = []

    @classmethod
    async def build(cls, kb: dict, embedder, cache) -> Prepared:
        retriever = Retriever(embedder, cache)
        retriever.rebuild(kb["documents"], 1)
        retriever.start_semantic()
        prepared = cls(retriever, kb)
        for question in kb["questions"]:
            query = conversation_query(question["messages"])
            vectors = await retriever.query_vectors(query) if embedder is not None else None
            prepared.questions.append((question, retriever.candidates(retriever.snapshot, query, vectors)))
        return prepared

    def outcomes(self, mode: str, policy: FusionPolicy) -> list[Outcome]:
        policy = mode_policy(mode, policy)
        results = []
        for question, candidates in self.questions:
            ranked = self.retriever.select(self.retriever.snapshot, rank(candidates, policy), policy)
            passages = [item.passage for item in ranked if item.injected]
            results.append(
                Outcome(
                    self.kb["name"],
                    question,
                    mode,
                    is_right(question, passages),
                    sum(len(p.text) for p in passages),
                    [p.id for p in passages],
                )
            )
        return results


async def prepare_all(sets: list[dict]) -> dict[str, list[Prepared]]:
    with tempfile.TemporaryDirectory() as folder:
        cache = EmbeddingCache(str(Path(folder) / "embeddings.sqlite3"))
        embedder = BundledEmbedder()
        prepared = {
            "lexical": [await Prepared.build(kb, None, None) for kb in sets],
            "semantic": [await Prepared.build(kb, embedder, cache) for kb in sets],
        }
        prepared["hybrid"] = prepared["semantic"]
        cache.close()
    return prepared


def evaluate(prepared: dict[str, list[Prepared]], policy: FusionPolicy) -> dict[str, list[Outcome]]:
    return {mode: [o for p in prepared[mode] for o in p.outcomes(mode, policy)] for mode in MODES}


def summary(outcomes: list[Outcome]) -> dict[str, tuple[int, int]]:
    """category -> (right, total), plus the "answerable" and "unanswerable" totals."""
    table: dict[str, list[int]] = {}
    for outcome in outcomes:
        category = outcome.question["category"]
        group = "unanswerable" if outcome.question["answer"] is None else "answerable"
        for key in (category, group):
            right, total = table.setdefault(key, [0, 0])
            table[key] = [right + outcome.right, total + 1]
    return {key: (value[0], value[1]) for key, value in table.items()}


def share(pair: tuple[int, int]) -> float:
    return pair[0] / pair[1] if pair[1] else float("nan")


def score(outcomes: list[Outcome]) -> tuple[bool, float, float]:
    """Meets the targets?, answerable share, unanswerable share."""
    table = summary(outcomes)
    answerable = share(table["answerable"])
    categories = [
        share(v)
        for k, v in table.items()
        if k not in ("answerable", "unanswerable") and not k.startswith("unanswerable")
    ]
    meets = answerable >= ANSWERABLE_TARGET and min(categories) >= CATEGORY_TARGET
    return meets, answerable, share(table.get("unanswerable", (0, 0)))


def report(by_mode: dict[str, list[Outcome]]) -> str:
    tables = {mode: summary(outcomes) for mode, outcomes in by_mode.items()}
    categories = sorted({k for t in tables.values() for k in t if k not in ("answerable", "unanswerable")})
    lines = [
        "| category | questions | " + " | ".join(MODES) + " |",
        "|---|---|" + "---|" * len(MODES),
    ]
    for category in [*categories, "answerable", "unanswerable"]:
        total = tables["hybrid"][category][1]
        cells = [f"{share(tables[mode][category]):.0%}" for mode in MODES]
        label = f"**{category}**" if category in ("answerable", "unanswerable") else category
        lines.append(f"| {label} | {total} | " + " | ".join(cells) + " |")
    sizes = {mode: [o.injected_chars for o in outcomes if o.injected_chars] for mode, outcomes in by_mode.items()}
    lines.append(
        "| injected characters, median / max | | "
        + " | ".join(
            f"{statistics.median(sizes[m]) if sizes[m] else 0:.0f} / {max(sizes[m], default=0)}" for m in MODES
        )
        + " |"
    )
    return "\n".join(lines)


def thresholds(prepared: dict[str, list[Prepared]]) -> str:
    """The trade RAG_MIN_RELEVANCE makes: answers found against unanswerable questions left alone (hybrid)."""
    lines = [
        "| RAG_MIN_RELEVANCE | answerable found | unanswerable with nothing injected | weakest category |",
        "|---|---|---|---|",
    ]
    for threshold in (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5):
        policy = replace(DEFAULT_POLICY, threshold=threshold)
        outcomes = [o for p in prepared["hybrid"] for o in p.outcomes("hybrid", policy)]
        table = summary(outcomes)
        answerable = {
            k: v
            for k, v in table.items()
            if k not in ("answerable", "unanswerable") and not k.startswith("unanswerable")
        }
        weakest = min(answerable, key=lambda k: share(answerable[k]))
        mark = " (default)" if threshold == DEFAULT_POLICY.threshold else ""
        lines.append(
            f"| {threshold:g}{mark} | {share(table['answerable']):.0%} | {share(table['unanswerable']):.0%} | "
            f"{weakest} {share(answerable[weakest]):.0%} |"
        )
    return "\n".join(lines)


def misses(outcomes: list[Outcome]) -> str:
    lines = []
    for o in outcomes:
        if not o.right:
            q = o.question
            last = q["messages"][-1]["content"]
            expected = "nothing" if q["answer"] is None else f"{q['answer']['doc']}: {q['answer']['contains']!r}"
            lines.append(
                f"- [{o.kb}/{q['category']}] {last!r} → injected {o.injected or 'nothing'}; expected {expected}"
            )
    return "\n".join(lines)


def sweep(prepared: dict[str, list[Prepared]]) -> list[tuple[tuple[bool, float, float], FusionPolicy]]:
    results = []
    grid = itertools.product(
        (0.4, 0.5, 0.6, 0.7, 0.8),  # semantic_weight
        (2.0, 2.5, 3.0, 3.5, 4.0),  # margin_scale
        (0.4, 0.5, 0.6, 0.7),  # history_weight
        (0.25, 0.3, 0.35, 0.4, 0.45, 0.5),  # threshold
        (0.0, 0.5),  # follower_ratio
    )
    for semantic_weight, margin_scale, history_weight, threshold, ratio in grid:
        policy = FusionPolicy(semantic_weight, margin_scale, history_weight, threshold, ratio)
        outcomes = [o for p in prepared["hybrid"] for o in p.outcomes("hybrid", policy)]
        results.append((score(outcomes), policy))
    # The targets first; then the answerable share, as long as most unanswerable questions get nothing.
    results.sort(key=lambda item: (item[0][0], item[0][2] >= 0.7, item[0][1], item[0][2]), reverse=True)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", action="store_true", help="list the hybrid mode's wrong answers")
    parser.add_argument("--sweep", action="store_true", help="search the fusion weights and threshold")
    args = parser.parse_args()
    sets = load_sets()
    counts = sum(len(kb["questions"]) for kb in sets)
    print(f"{len(sets)} knowledge bases, {counts} questions\n")
    prepared = await prepare_all(sets)
    if args.sweep:
        for (meets, answerable, unanswerable), policy in sweep(prepared)[:15]:
            print(
                f"{'meets' if meets else 'misses'} answerable {answerable:.1%} "
                f"unanswerable {unanswerable:.1%}  {policy}"
            )
        print()
    by_mode = evaluate(prepared, DEFAULT_POLICY)
    print(report(by_mode))
    print()
    print(thresholds(prepared))
    if args.misses:
        print("\nHybrid misses:\n" + misses(by_mode["hybrid"]))


if __name__ == "__main__":
    asyncio.run(main())
