"""Documents split into passages: on headings, then paragraphs, then sentences, with overlap; short ones whole."""

from __future__ import annotations

import itertools
import re

from llmserver.knowledge.passages import PASSAGE_CHARS, split_document


def long_terms() -> str:
    sections = []
    for number, topic in enumerate(["Booking", "Deposits", "Cancellation", "Liability", "Pets", "Complaints"], 1):
        sentences = " ".join(
            f"Clause {number}.{k} about {topic.lower()} says that guests and the hotel each keep their part of "
            f"the agreement in case {k}."
            for k in range(1, 14)
        )
        sections.append(f"## {number}. {topic}\n\n{sentences}\n\nA short closing paragraph on {topic.lower()}.")
    return "\n\n".join(sections)


def test_a_short_document_is_one_passage_with_its_title():
    (passage,) = split_document({"id": "hours", "title": "Opening hours", "content": "Open 9 to 5.\n\nClosed Sundays."})
    assert passage.id == "hours#1" and passage.text == "Open 9 to 5. Closed Sundays."
    assert passage.indexed_text.startswith("Opening hours\n")


def test_a_long_document_is_cut_on_headings_into_passages_of_bounded_size():
    content = long_terms()
    passages = split_document({"id": "terms", "title": "Terms", "content": content})
    assert len(content) > 6 * PASSAGE_CHARS and len(passages) >= 8
    assert [p.number for p in passages] == list(range(1, len(passages) + 1))
    assert all(len(p.text) <= PASSAGE_CHARS * 1.25 for p in passages)
    assert {p.heading for p in passages} == {
        "1. Booking",
        "2. Deposits",
        "3. Cancellation",
        "4. Liability",
        "5. Pets",
        "6. Complaints",
    }
    # Nothing is lost: every clause is in some passage, and a passage never mixes two sections.
    for number in range(1, 7):
        for k in range(1, 14):
            assert any(f"Clause {number}.{k} " in p.text for p in passages)
    for passage in passages:
        sections = set(re.findall(r"Clause (\d)\.", passage.text))
        assert sections <= {passage.heading[0]}, f"{passage.id} mixes sections {sections}"


def test_a_cut_paragraph_carries_its_last_sentence_over():
    passages = split_document({"id": "terms", "title": "Terms", "content": long_terms()})
    same_section = [(a, b) for a, b in itertools.pairwise(passages) if a.heading == b.heading]
    assert any(b.text.split(". ")[0] in a.text for a, b in same_section), "no overlap between consecutive passages"


def test_chinese_is_cut_at_its_own_sentence_ends():
    content = (
        "## 第一章 总则\n\n"
        + "会员可以在全球酒店享受优惠。" * 90
        + "\n\n## 第二章 积分\n\n"
        + "每消费一元可获得一个积分。" * 10
    )
    passages = split_document({"id": "zh", "title": "会员", "content": content})
    assert len(passages) >= 2 and all(p.text.endswith("。") for p in passages)
    assert passages[-1].heading == "第二章 积分"
