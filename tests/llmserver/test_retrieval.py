"""The tokeniser and BM25 index behind the knowledge base."""

from __future__ import annotations

from llmserver.knowledge.lexical import BM25Index, tokenize


def test_english_is_lowercased_stemmed_and_stopwords_dropped():
    assert tokenize("How do I connect the Servers?") == ["connect", "server"]


def test_chinese_becomes_character_bigrams_and_mixed_text_keeps_both():
    assert tokenize("连接声网") == ["连接", "接声", "声网"]
    assert tokenize("声") == ["声"]
    assert tokenize("Agora 声网 engine") == ["声网", "agora", "engin"]


def test_search_ranks_scores_and_respects_k_and_the_minimum():
    index = BM25Index([tokenize(t) for t in ("audio clips", "knowledge base documents", "连接声网引擎")])
    assert [position for position, _ in index.search("knowledge documents", 3, 0.0)] == [1]
    assert index.search("声网", 3, 0.0)[0][0] == 2
    assert index.search("knowledge documents", 3, 100.0) == []
    assert index.search("nothing matches", 3, 0.0) == []
    assert BM25Index([]).search("anything", 3, 0.0) == []
