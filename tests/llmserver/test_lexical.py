"""The tokeniser and the BM25 index over passages, and the coverage of a query's words."""

from __future__ import annotations

from llmserver.knowledge.lexical import LexicalIndex, tokenize


def test_english_is_lowercased_stemmed_and_stopwords_dropped():
    assert tokenize("How do I connect the Servers?") == ["connect", "server"]


def test_numbers_written_as_words_meet_digits():
    assert tokenize("twenty four hour reception") == tokenize("24-hour reception") == ["24", "hour", "recept"]
    assert "930" not in tokenize("at nine thirty") and {"9", "30"} <= set(tokenize("at nine thirty"))


def test_chinese_becomes_character_bigrams_and_mixed_text_keeps_both():
    assert tokenize("连接声网") == ["连接", "接声", "声网"]
    assert tokenize("声") == ["声"]
    assert tokenize("Agora 声网 engine") == ["agora", "声网", "engin"]


def test_bm25_ranks_and_coverage_is_a_share_of_the_query():
    corpus = [tokenize(t) for t in ("audio clips of speech", "knowledge base documents and passages", "连接声网引擎")]
    index = LexicalIndex(corpus)
    scores = index.scores(tokenize("knowledge documents"))
    assert scores.argmax() == 1 and scores[0] == scores[2] == 0
    assert index.scores(tokenize("声网")).argmax() == 2
    assert index.coverage(tokenize("knowledge documents"), 1) == 1.0
    assert 0 < index.coverage(tokenize("knowledge base audio"), 1) < 1
    assert index.coverage(tokenize("nothing matches"), 0) == 0.0
    assert LexicalIndex([]).scores(tokenize("anything")).size == 0


def test_coverage_means_the_same_for_one_passage_and_many():
    one = LexicalIndex([tokenize("The Westkapelle lighthouse is open for climbing from April to October.")])
    question = tokenize("When does the Westkapelle lighthouse open for climbing?")
    assert one.coverage(question, 0) == 1.0
    many = LexicalIndex(
        [tokenize("The Westkapelle lighthouse is open for climbing from April to October.")]
        + [tokenize(f"Unrelated passage number {n} about gardens.") for n in range(200)]
    )
    assert many.coverage(question, 0) == 1.0
