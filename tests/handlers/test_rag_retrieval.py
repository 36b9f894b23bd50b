"""What the RAG endpoint injects, end to end with the bundled model: each case issue 10 found wrong, and the admin
API's view of retrieval (passages, the retrieval test)."""

from __future__ import annotations

import json

import pytest

from fakes.knowledge_texts import HOTEL, LIGHTHOUSE, terms_and_conditions
from tests.client import stream
from tests.handlers.admin_client import bearer

pytestmark = pytest.mark.settings(embeddings="bundled")


async def use_knowledge(base_url: str, services, documents: list[dict]) -> None:
    response = await bearer(base_url, services.admin_token).fetch(
        "PUT", "/admin/api/knowledge.json", {"documents": documents}
    )
    assert response.code == 200, response.body


def knowledge_sent(fake_upstream) -> str:
    """The knowledge message the upstream received ("" when nothing was injected)."""
    messages = fake_upstream.last.body["messages"]
    return next((m["content"] for m in messages if m["role"] == "system" and "Knowledge:" in m["content"]), "")


def turns(*texts: str) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


@pytest.mark.gen_test(timeout=60)
async def test_a_two_document_knowledge_base_answers_its_question(
    http_server, base_url, services, semantic, fake_upstream
):
    await use_knowledge(base_url, services, LIGHTHOUSE)
    await stream(
        base_url,
        "/rag/chat/completions",
        {"messages": turns("When does the Westkapelle lighthouse open for climbing?")},
    )
    assert "April to October, daily from 10:00 to 17:00" in knowledge_sent(fake_upstream)
    assert "(lighthouse#1)" in knowledge_sent(fake_upstream)
    await stream(base_url, "/rag/chat/completions", {"messages": turns("Who won the football world cup in 1974?")})
    assert knowledge_sent(fake_upstream) == ""


@pytest.mark.gen_test(timeout=60)
async def test_only_the_relevant_passages_of_a_long_document_go_upstream(
    http_server, base_url, services, semantic, fake_upstream
):
    terms = terms_and_conditions()
    await use_knowledge(base_url, services, [terms, *HOTEL])
    await stream(base_url, "/rag/chat/completions", {"messages": turns("Can I bring my dog, and what does it cost?")})
    sent = knowledge_sent(fake_upstream)
    assert "Dogs up to 20 kg are welcome for €15 per night" in sent and "8. Pets" in sent
    assert len(sent) < 3500 < len(terms["content"])  # the budget (2,500 characters of passages) and the template
    record = services.request_log.recent()[-1]["retrieval"]
    assert record["injected_chars"] <= 2500 and record["hits"][0]["id"].startswith("terms#")


@pytest.mark.parametrize(
    "conversation,expected",
    [
        (("can I pay with my phone",), "Apple Pay and Google Pay"),
        (
            ("How much is a double room per night?", "A double room costs €149 per night.", "what about the suite?"),
            "€289",
        ),
        (
            ("How much is a double room per night?", "A double room costs €149 per night.", "and with breakfast?"),
            "€179",
        ),
        (("um do the breaks on the rental bikes work",), "hand brakes"),
        (("可以用支付宝付款吗？",), "支付宝"),
    ],
    ids=["paraphrase", "follow-up", "follow-up-breakfast", "speech-recognition", "chinese"],
)
@pytest.mark.gen_test(timeout=60)
async def test_the_cases_lexical_retrieval_missed(
    http_server, base_url, services, semantic, fake_upstream, conversation, expected
):
    await use_knowledge(base_url, services, HOTEL)
    await stream(base_url, "/rag/chat/completions", {"messages": turns(*conversation)})
    sent = knowledge_sent(fake_upstream)
    first = sent.split("[2]")[0]
    assert expected in first, sent
    record = services.request_log.recent()[-1]["retrieval"]
    assert record["semantic"] and "#" in record["hits"][0]["id"]
    if len(conversation) > 1:
        assert "⟵" in record["query"]  # the log shows the history the query was weighted with


@pytest.mark.gen_test(timeout=60)
async def test_the_admin_api_shows_passages_and_tests_retrieval(http_server, base_url, services, semantic):
    terms = terms_and_conditions()
    await use_knowledge(base_url, services, [terms, *HOTEL])
    admin = bearer(base_url, services.admin_token)
    passages = json.loads((await admin.fetch("GET", "/admin/api/knowledge/terms/passages")).body)["passages"]
    assert len(passages) > 10 and passages[0]["id"] == "terms#1" and passages[7]["heading"].startswith(("2.", "3."))
    conversation = {"messages": turns("How much is a double room?", "€149 per night.", "and the suite?")}
    tested = json.loads((await admin.fetch("POST", "/admin/api/retrieval", conversation)).body)
    assert tested["query"] == {"text": "and the suite?", "history": "How much is a double room? €149 per night."}
    assert tested["semantic"] and tested["budget"] == 2500
    best = tested["passages"][0]
    assert best["id"] == "suite#1" and best["injected"] and best["reason"] == "injected"
    assert set(best["last"]) == {"bm25", "coverage", "cosine", "margin"} and best["history"]["margin"] is not None
    assert any(not p["injected"] and p["reason"] for p in tested["passages"])
    missing = await admin.fetch("GET", "/admin/api/knowledge/nope/passages")
    assert missing.code == 404


@pytest.mark.settings(max_document_chars=60_000, embeddings="none")
@pytest.mark.gen_test
async def test_huge_documents_are_split_up_to_the_limit_then_refused(http_server, base_url, services):
    admin = bearer(base_url, services.admin_token)
    big = {"id": "big", "title": "Big", "content": ("A sentence about the big manual. " * 40 + "\n\n") * 40}
    assert 40_000 < len(big["content"]) < 60_000
    assert (await admin.fetch("POST", "/admin/api/knowledge", big)).code == 201
    assert len(services.retriever.passages_of("big")) > 40
    too_big = await admin.fetch("POST", "/admin/api/knowledge", {"id": "bigger", "content": "x " * 30_001})
    assert too_big.code == 413 and "MAX_DOCUMENT_CHARS" in json.loads(too_big.body)["error"]["message"]
    blank = await admin.fetch("POST", "/admin/api/knowledge", {"id": "blank", "content": "  \n\t "})
    assert blank.code == 400 and json.loads(blank.body)["error"]["param"] == "content"
