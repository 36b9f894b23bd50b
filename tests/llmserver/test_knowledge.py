"""The KnowledgeBase service: the shipped documents, edits seen by retrieval at once, persistence, refusals."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import pytest

from llmserver.knowledge.query import single_query
from llmserver.knowledge.retriever import Retriever
from llmserver.knowledge.store import DocumentNotFound, EditConflict, KnowledgeBase, KnowledgeError
from tests.conftest import SHIPPED_KNOWLEDGE
from tests.crash import crash_at_every_step


@pytest.fixture
def shipped() -> KnowledgeBase:
    return KnowledgeBase.load(SHIPPED_KNOWLEDGE)


@pytest.fixture
def kb(tmp_path) -> KnowledgeBase:
    return KnowledgeBase.load(str(tmp_path / "kb.json"))


def test_shipped_knowledge_base_has_english_and_chinese_documents(shipped):
    documents = shipped.list()
    assert 15 <= len(documents) <= 30
    assert sum(any("\u4e00" <= ch <= "\u9fff" for ch in d["content"]) for d in documents) >= 3


def found(kb: KnowledgeBase, question: str) -> list[str]:
    """The passages the RAG endpoint would inject for `question` (lexical retrieval, rebuilt on every change)."""
    retriever = Retriever()
    kb.subscribe(retriever.rebuild)
    result = asyncio.run(retriever.retrieve(single_query(question)))
    return [passage.id for passage in result.injected]


def test_add_update_delete_are_searchable_at_once_and_saved(kb):
    assert kb.version == 0 and not os.path.exists(kb.path)
    kb.add({"id": "parking", "title": "Parking", "content": "Visitors park in garage B, level minus two."})
    assert kb.version == 1 and os.path.exists(kb.path)
    retriever = Retriever()
    kb.subscribe(retriever.rebuild)  # as the server's retriever is: each change is indexed before it returns

    def passages(question: str) -> list:
        return asyncio.run(retriever.retrieve(single_query(question))).injected

    assert passages("where do visitors park")[0].id == "parking#1"
    kb.update("parking", {"title": "Parking", "content": "Visitors now park in garage C on the roof."})
    assert "garage C" in passages("where do visitors park")[0].text
    kb.delete("parking")
    assert passages("where do visitors park") == []
    assert kb.version == 3
    saved = json.loads(Path(kb.path).read_text(encoding="utf-8"))
    assert saved == {"version": 3, "documents": []}


def test_saved_file_reloads_identically(kb):
    kb.add({"id": "a-1", "title": "Äpfel", "content": "苹果 and apples", "tags": ["fruit"]})
    kb.add({"id": "b_2", "content": "second", "enabled": False})
    again = KnowledgeBase.load(kb.path)
    assert again.export() == kb.export()
    assert again.get("b_2")["enabled"] is False and again.get("b_2")["title"] == ""


def test_a_reader_never_sees_half_a_file_while_saves_go_on(kb, tmp_path):
    kb.add({"id": "big", "content": "x" * 90_000})  # large enough that a plain write would be seen half-done
    done = threading.Event()
    seen: list[int] = []

    def read_continuously() -> None:
        while not done.is_set():
            seen.append(len(json.loads(Path(kb.path).read_text(encoding="utf-8"))["documents"]))

    reader = threading.Thread(target=read_continuously)
    reader.start()
    try:
        for n in range(30):
            kb.add({"id": f"d{n}", "content": "y" * 50_000})
    finally:
        done.set()
        reader.join()
    assert len(seen) > 10 and seen == sorted(seen)  # every read parsed: whole files only, in order
    assert sorted(os.listdir(tmp_path)) == ["kb.json"]  # no temporary files left behind


def test_a_failed_save_changes_nothing(kb, tmp_path):
    kb.add({"id": "keep", "content": "kept"})
    before = Path(kb.path).read_bytes()
    os.unlink(kb.path)
    os.mkdir(kb.path)  # a folder where the file should be: the rename fails for root too
    try:
        with pytest.raises(OSError):
            kb.add({"id": "lost", "content": "never saved"})
    finally:
        os.rmdir(kb.path)
        Path(kb.path).write_bytes(before)
    assert [d["id"] for d in kb.list()] == ["keep"] and kb.version == 1
    assert found(kb, "never saved") == []


BAD_DOCUMENTS = [
    ({"content": "no id"}, "id"),
    ({"id": "has space", "content": "x"}, "id"),
    ({"id": "../etc", "content": "x"}, "id"),
    ({"id": "x" * 65, "content": "x"}, "id"),
    ({"id": "ok"}, "content"),
    ({"id": "ok", "content": "   "}, "content"),
    ({"id": "ok", "content": 5}, "content"),
    ({"id": "ok", "content": "x" * 1001}, "content"),
    ({"id": "ok", "content": "x", "title": ["t"]}, "title"),
    ({"id": "ok", "content": "x", "tags": "one"}, "tags"),
    ({"id": "ok", "content": "x", "tags": [""]}, "tags"),
    ({"id": "ok", "content": "x", "enabled": "yes"}, "enabled"),
    ({"id": "ok", "content": "x", "colour": "red"}, "colour"),
    (["not", "an", "object"], None),
]


@pytest.mark.parametrize("document,field", BAD_DOCUMENTS)
def test_bad_documents_are_refused_and_nothing_changes(tmp_path, document, field):
    kb = KnowledgeBase.load(str(tmp_path / "kb.json"), max_document_chars=1000)
    kb.add({"id": "existing", "content": "stays"})
    before = Path(kb.path).read_bytes()
    with pytest.raises(KnowledgeError) as refused:
        kb.add(document)
    assert refused.value.field == field
    assert kb.version == 1 and Path(kb.path).read_bytes() == before


def test_duplicate_ids_unknown_ids_and_the_document_limit(tmp_path):
    kb = KnowledgeBase.load(str(tmp_path / "kb.json"), max_documents=2)
    kb.add({"id": "one", "content": "1"})
    with pytest.raises(KnowledgeError, match="already exists") as duplicate:
        kb.add({"id": "one", "content": "again"})
    assert duplicate.value.status == 409
    with pytest.raises(DocumentNotFound):
        kb.update("nope", {"content": "x"})
    with pytest.raises(DocumentNotFound):
        kb.delete("nope")
    with pytest.raises(KnowledgeError, match="cannot be changed"):
        kb.update("one", {"id": "two", "content": "x"})
    kb.add({"id": "two", "content": "2"})
    with pytest.raises(KnowledgeError, match="limit"):
        kb.add({"id": "three", "content": "3"})


def test_conflicting_edits_are_refused(kb):
    kb.add({"id": "doc", "content": "v1"})
    kb.add({"id": "other", "content": "unrelated"})
    read_at = kb.version  # two operators read the knowledge base here
    kb.update("doc", {"content": "the first operator's edit"}, read_version=read_at)
    with pytest.raises(EditConflict) as conflict:
        kb.update("doc", {"content": "the second operator's edit"}, read_version=read_at)
    assert conflict.value.status == 409
    assert kb.get("doc")["content"] == "the first operator's edit"
    kb.update("other", {"content": "a change to another document is no conflict"}, read_version=read_at)


INVALID_FILES = [
    ("{broken", "not valid JSON"),
    ('["a list"]', 'expected {"documents"'),
    ('{"documents": {"id": "x"}}', 'expected {"documents"'),
    ('{"documents": [{"id": "a", "content": "x"}, {"id": "a", "content": "y"}]}', "'a' appears twice"),
    ('{"documents": [{"id": "a", "content": "x"}, {"id": "b", "title": "no content"}]}', "document 'b': 'content'"),
    ('{"documents": [{"id": "bad id", "content": "x"}]}', "document #1: 'id'"),
]


@pytest.mark.parametrize("text,message", INVALID_FILES)
def test_invalid_files_are_refused_with_a_message_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "knowledge.json"
    path.write_text(text)
    with pytest.raises(KnowledgeError) as refused:
        KnowledgeBase.load(str(path))
    assert str(path) in str(refused.value) and message in str(refused.value)
    assert path.read_text() == text


def test_import_is_validated_whole_before_anything_changes(kb):
    kb.add({"id": "keep", "content": "kept"})
    with pytest.raises(KnowledgeError):
        kb.replace_all({"documents": [{"id": "new", "content": "fine"}, {"id": "bad"}]})
    assert [d["id"] for d in kb.list()] == ["keep"]
    kb.replace_all({"documents": [{"id": "new", "content": "fine"}]})
    assert [d["id"] for d in kb.list()] == ["new"] and found(kb, "fine") == ["new#1"]


def test_saves_keep_the_files_permissions(kb):
    kb.add({"id": "one", "content": "first"})
    os.chmod(kb.path, 0o600)
    kb.add({"id": "two", "content": "second"})
    assert os.stat(kb.path).st_mode & 0o777 == 0o600


def test_a_bad_tag_is_named_with_the_limit(kb):
    with pytest.raises(KnowledgeError) as refused:
        kb.add({"id": "t", "content": "x", "tags": ["fine", "y" * 65]})
    assert "'" + "y" * 65 + "'" in str(refused.value) and "1 to 64 characters" in str(refused.value)


def test_a_crash_at_any_step_of_a_save_leaves_the_old_file_or_the_new(tmp_path):
    folder = tmp_path / "kb"
    folder.mkdir()
    path = folder / "knowledge.json"
    KnowledgeBase.load(str(path)).add({"id": "doc", "content": "The first version."})
    pristine = {"knowledge.json": path.read_bytes()}
    change = "kb.update('doc', {'content': 'The second version.'})"
    outcomes = set()
    for _ in crash_at_every_step(f"kb = KnowledgeBase.load({str(path)!r})", change, folder, pristine):
        outcomes.add(KnowledgeBase.load(str(path)).get("doc")["content"])
        assert sorted(os.listdir(folder)) == ["knowledge.json"]  # a temporary file a crash left is removed
    assert outcomes == {"The first version.", "The second version."}
