"""The retriever with the bundled model: what issue 10 found wrong, each a test; the embedding cache; the
OpenAI-compatible embeddings endpoint, up, down, slow and wrong."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator

import numpy as np
import pytest

from fakes.embeddings import FakeEmbeddings
from fakes.knowledge_texts import HOTEL, LIGHTHOUSE, terms_and_conditions
from llmserver.knowledge.embeddings import (
    BundledEmbedder,
    EmbeddingCache,
    EmbeddingError,
    EndpointEmbedder,
    QueryBatcher,
)
from llmserver.knowledge.query import conversation_query, single_query
from llmserver.knowledge.retriever import RetrievalResult, Retriever


class CountingEmbedder(BundledEmbedder):
    """The bundled model, counting the texts it is asked to embed."""

    def __init__(self) -> None:
        super().__init__()
        self.embedded: list[str] = []

    def embed(self, texts):
        self.embedded.extend(texts)
        return super().embed(texts)


def ready(documents, embedder=None, cache=None, **options) -> Retriever:
    retriever = Retriever(embedder if embedder is not None else BundledEmbedder(), cache, **options)
    retriever.rebuild(documents, 1)
    retriever.start_semantic()
    assert retriever.semantic_ready
    return retriever


def ask(retriever: Retriever, *turns: str) -> RetrievalResult:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return asyncio.run(retriever.retrieve(conversation_query(messages)))


def injected(result: RetrievalResult) -> list[str]:
    return [passage.doc_id for passage in result.injected]


def test_a_small_knowledge_base_answers_and_the_rule_means_the_same_at_any_size():
    """Issue 10, 1: with two documents the lighthouse question found nothing (a raw BM25 cut-off)."""
    question = "When does the Westkapelle lighthouse open for climbing?"
    small = ready(LIGHTHOUSE)
    assert injected(ask(small, question))[0] == "lighthouse"
    assert injected(ask(small, "What is the capital of France?")) == []
    filler = [
        {"id": f"filler-{n}", "content": f"Note {n} on the garden shed, its paint and its key."} for n in range(300)
    ]
    large = ready(LIGHTHOUSE + filler)
    assert injected(ask(large, question))[0] == "lighthouse"
    assert injected(ask(large, "What is the capital of France?")) == []


def test_a_long_document_gives_only_its_relevant_passages_within_the_budget():
    """Issue 10, 2: a 13,000-character document was injected whole, its answer drowned."""
    terms = terms_and_conditions()
    retriever = ready([terms, *HOTEL])
    result = ask(retriever, "Can I bring my dog, and what does it cost?")
    assert result.injected and result.injected_chars <= 2500 < len(terms["content"])
    assert "Dogs up to 20 kg are welcome for €15 per night" in result.injected[0].text
    assert result.injected[0].id.startswith("terms#") and result.injected[0].heading == "8. Pets"
    unrelated = ask(retriever, "Which metro goes to the football stadium?")
    assert not [p for p in unrelated.injected if p.doc_id == "terms"]


def test_paraphrases_are_found_by_meaning():
    """Issue 10, 3: voice users never use the document's words."""
    retriever = ready(HOTEL)
    assert injected(ask(retriever, "can I pay with my phone"))[0] == "payment"
    assert injected(ask(retriever, "I arrive very late at night, can I still check in?"))[0] == "reception"


def test_follow_ups_take_their_subject_from_the_conversation():
    """Issue 10, 4: "and with breakfast?" has no subject of its own."""
    retriever = ready(HOTEL)
    double = ("How much is a double room per night?", "A double room costs €149 per night.")
    assert injected(ask(retriever, *double, "and with breakfast?"))[0] == "double"
    assert injected(ask(retriever, *double, "what about the suite?"))[0] == "suite"
    # A standalone question after a change of topic is not pulled back to the rooms.
    assert injected(ask(retriever, *double, "Do you take cheques?"))[0] == "payment"


def test_speech_recognition_text_is_understood():
    """Issue 10, 5: no punctuation, homophones, numbers spelled out."""
    retriever = ready(HOTEL)
    assert injected(ask(retriever, "um do the breaks on the rental bikes work"))[0] == "bikes"
    assert injected(ask(retriever, "is the reception open twenty four hours"))[0] == "reception"
    assert injected(ask(retriever, "whats the number for reception"))[0] == "reception"


def test_exact_identifiers_and_chinese_and_across_languages():
    retriever = ready(HOTEL)
    assert injected(ask(retriever, "whose number is +31 20 555 0134"))[0] == "reception"
    assert injected(ask(retriever, "可以用支付宝付款吗？"))[0] == "zh-payment"
    assert "zh-payment" in injected(ask(retriever, "Can I pay with Alipay or WeChat?"))


def test_every_candidate_says_why_it_was_or_was_not_injected():
    result = ask(ready(HOTEL), "How much is a double room?")
    reasons = {item.passage.doc_id: item.reason for item in result.ranked}
    assert reasons["double"] == "injected"
    assert any("of the best" in reason or "below" in reason for reason in reasons.values())
    assert result.semantic and result.ms > 0
    assert ask(ready(HOTEL), "tell me a joke").injected == []


def test_without_a_model_retrieval_is_lexical():
    retriever = Retriever()
    retriever.rebuild(HOTEL, 1)
    result = ask(retriever, "How much is a double room with breakfast?")
    assert not result.semantic and injected(result)[0] == "double"


# The embedding cache --------------------------------------------------------------------------------------------


@pytest.fixture
def open_cache():
    """Opens caches that are closed after the test (Python 3.13 warns of every SQLite connection left open)."""
    opened: list[EmbeddingCache] = []

    def open_one(path) -> EmbeddingCache:
        opened.append(EmbeddingCache(str(path)))
        return opened[-1]

    yield open_one
    for cache in opened:
        cache.close()


def test_a_restart_embeds_nothing_again_and_an_edit_only_what_changed(tmp_path, open_cache):
    path = str(tmp_path / "embeddings.sqlite3")
    first = CountingEmbedder()
    ready(HOTEL, first, open_cache(path))
    assert len(first.embedded) >= len(HOTEL)
    again = CountingEmbedder()
    retriever = ready(HOTEL, again, open_cache(path))
    assert len(again.embedded) == 1  # a probe of the model; the background and every passage came from the cache
    changed = [{**HOTEL[0], "content": "Reception closes at midnight; after that, ring the night bell."}, *HOTEL[1:]]
    retriever.rebuild(changed, 2)
    assert again.embedded[1:] == ["Reception\nReception closes at midnight; after that, ring the night bell."]
    assert injected(ask(retriever, "what if I arrive after midnight"))[0] == "reception"


def test_a_damaged_cache_is_set_aside_and_rebuilt(tmp_path, caplog, open_cache):
    path = tmp_path / "embeddings.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="llmserver"):
        retriever = ready(HOTEL, BundledEmbedder(), open_cache(path))
    assert "cannot be read" in caplog.text
    (aside,) = tmp_path.glob("embeddings.sqlite3.damaged-*")
    assert aside.read_bytes() == b"this is not a database" * 100  # renamed, never deleted
    assert injected(ask(retriever, "can I pay with my phone"))[0] == "payment"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        assert connection.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] > len(HOTEL)


def test_vectors_that_are_not_the_models_are_ignored(tmp_path, open_cache):
    path = str(tmp_path / "embeddings.sqlite3")
    ready(HOTEL, BundledEmbedder(), open_cache(path))
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("UPDATE vectors SET vector = ?", [np.ones(7, dtype=np.float32).tobytes()])  # wrong size
        connection.commit()
    embedder = CountingEmbedder()
    retriever = ready(HOTEL, embedder, open_cache(path))
    assert len(embedder.embedded) >= len(HOTEL)  # embedded again rather than trusted
    assert injected(ask(retriever, "can I pay with my phone"))[0] == "payment"


# An OpenAI-compatible embeddings endpoint -----------------------------------------------------------------------


@pytest.fixture
def fake_embeddings(io_loop):
    fake = FakeEmbeddings().start()
    yield fake
    io_loop.run_sync(fake.stop)


@contextlib.asynccontextmanager
async def endpoint_retriever(fake: FakeEmbeddings, timeout: float = 2.0) -> AsyncIterator[Retriever]:
    embedder = EndpointEmbedder(fake.base_url, "sk-embeddings", "fake-embedder", timeout)
    retriever = Retriever(embedder)
    retriever.rebuild(HOTEL, 1)
    try:
        # Indexing is blocking (a worker thread in the server): here too, off the loop the fake endpoint runs on.
        await asyncio.get_running_loop().run_in_executor(None, retriever.start_semantic)
        yield retriever
    finally:
        await embedder.aclose()


@pytest.mark.gen_test(timeout=60)
async def test_an_embeddings_endpoint_serves_passages_in_batches_and_queries(fake_embeddings):
    async with endpoint_retriever(fake_embeddings) as retriever:
        assert retriever.semantic_ready
        result = await retriever.retrieve(single_query("can I pay with my phone"))
    assert result.semantic and result.injected[0].doc_id == "payment"
    assert max(len(batch) for batch in fake_embeddings.behaviour.requests) <= 64


@pytest.mark.gen_test(timeout=60)
async def test_an_endpoint_that_is_down_or_slow_falls_back_to_lexical_for_that_request(fake_embeddings, caplog):
    question = single_query("How much is a double room with breakfast?")
    async with endpoint_retriever(fake_embeddings, timeout=0.3) as retriever:
        fake_embeddings.behaviour.status = 503
        with caplog.at_level(logging.WARNING, logger="llmserver.knowledge"):
            down = await retriever.retrieve(question)
        assert not down.semantic and down.injected[0].doc_id == "double" and "lexical" in caplog.text
        fake_embeddings.behaviour.status = 200
        fake_embeddings.behaviour.delay = 1.0
        started = asyncio.get_running_loop().time()
        slow = await retriever.retrieve(question)
        assert not slow.semantic and asyncio.get_running_loop().time() - started < 0.9
        fake_embeddings.behaviour.delay = 0.0
        assert (await retriever.retrieve(single_query("can I pay with my phone"))).semantic  # back by itself


@pytest.mark.gen_test(timeout=60)
async def test_an_endpoint_that_miscounts_leaves_retrieval_lexical_and_says_why(fake_embeddings, caplog):
    fake_embeddings.behaviour.drop_one = True
    with caplog.at_level(logging.WARNING, logger="llmserver.knowledge"):
        async with endpoint_retriever(fake_embeddings) as retriever:
            assert not retriever.semantic_ready and "different number of vectors" in caplog.text
            result = await retriever.retrieve(single_query("How much is a double room with breakfast?"))
    assert not result.semantic and result.injected[0].doc_id == "double"


@pytest.mark.gen_test(timeout=60)
async def test_queries_arriving_together_are_embedded_in_one_model_call_and_recent_ones_are_remembered():
    embedder = BundledEmbedder()
    questions = [f"Question {n}: is breakfast included with the double room?" for n in range(12)]
    alone = embedder.embed(questions)
    calls = embedder.queries.model_calls
    vectors = await asyncio.gather(*(embedder.embed_query(q) for q in [*questions, questions[0]]))
    assert embedder.queries.model_calls == calls + 1  # twelve questions (one asked twice), one batch
    for vector, expected in zip(vectors, [*alone, alone[0]], strict=True):
        np.testing.assert_allclose(vector, expected, atol=1e-5)  # a batch gives each text its own vector
    assert await embedder.embed_query(questions[5]) is vectors[5]  # remembered: no model call
    assert embedder.queries.model_calls == calls + 1


@pytest.mark.gen_test(timeout=60)
async def test_the_query_memory_is_bounded_and_a_failing_model_fails_every_waiter_softly():
    model = BundledEmbedder()
    batcher = QueryBatcher(model.embed, cache_size=2)
    for text in ("one", "two", "three"):
        await batcher.embed(text)
    await batcher.embed("one")  # the least recently used went out
    assert batcher.model_calls == 4

    def broken(texts):
        raise RuntimeError("weights damaged")

    model.queries = QueryBatcher(broken)
    assert await asyncio.gather(model.embed_query("a"), model.embed_query("b")) == [None, None]  # lexical for them
    retriever = ready(HOTEL, model)
    result = await retriever.retrieve(single_query("How much is a double room per night?"))
    assert result.semantic is False and injected(result)  # lexical retrieval still answers


@pytest.mark.gen_test(timeout=60)
async def test_an_endpoint_closed_at_shutdown_while_the_index_thread_embeds_ends_that_thread_quietly():
    # The server closes the embedder on SIGTERM while the start-up thread may still be embedding (retrying a refused
    # endpoint): the thread must end with the EmbeddingError it knows how to report, never a traceback (CI saw one).
    embedder = EndpointEmbedder("http://127.0.0.1:9/v1", None, "fake-embedding", timeout=0.3)
    await embedder.aclose()
    retriever = Retriever(embedder, None)
    retriever.rebuild(HOTEL, 1)
    with pytest.raises(EmbeddingError, match="closed"):
        embedder.embed(["a passage"])
    await asyncio.get_running_loop().run_in_executor(None, retriever.start_semantic)  # no exception escapes
    assert not retriever.semantic_ready and "closed" in retriever.semantic_error
