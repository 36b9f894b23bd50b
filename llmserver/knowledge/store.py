"""The knowledge base: documents in memory and in knowledge.json, saved atomically.

Every change is validated first, then saved, then made current and handed to the listeners (the retriever, which
re-indexes before the change is acknowledged, so the next request sees it). The version number grows with every
change, and each document remembers the version of its last change, so an editor who read an older version can
be told of a conflicting edit.
"""

from __future__ import annotations

import copy
import json
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ..files import remove_stale_temporaries, write_atomically
from ..operator_files import read_json_file
from ..protocol.errors import ServiceError
from ..versioned import VersionedStorage, change_with_retries, newer_state

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FIELDS = {"id", "title", "content", "tags", "enabled"}
MAX_TITLE_CHARS = 300
MAX_TAGS = 32
MAX_TAG_CHARS = 64


class KnowledgeError(ServiceError):
    """A document or file that cannot be accepted; the message says which and why."""


class DocumentNotFound(KnowledgeError):
    def __init__(self, doc_id: str) -> None:
        super().__init__(f"No document with id {doc_id!r}.", field="id", status=404)


class EditConflict(KnowledgeError):
    def __init__(self, doc_id: str, read_version: int, changed_version: int) -> None:
        super().__init__(
            f"Document {doc_id!r} was changed (at version {changed_version}) after you read it (at version "
            f"{read_version}). Reload it and apply your edit again.",
            field="version",
            status=409,
        )


Listener = Callable[[list[dict[str, Any]], int], None]


@dataclass(frozen=True)
class Change:
    """One change, as a storage saves it: the whole new state, and what changed to make it."""

    documents: dict[str, dict[str, Any]]  # every document, in order
    version: int  # the version it becomes (one more than the version it was made from)
    changed: tuple[str, ...]  # ids added or replaced
    deleted: tuple[str, ...]
    everything: bool = False  # an import: all documents replaced


@dataclass
class Snapshot:
    """A storage's state, as a process reads it (to start, or to catch up with other processes' changes)."""

    documents: list[dict[str, Any]]
    changed_at: dict[str, int]
    version: int


class KnowledgeStorage(VersionedStorage[Snapshot], Protocol):
    """Where the knowledge base is kept: knowledge.json (FileStorage), or Redis, shared by several processes
    (llmserver/shared/knowledge_store.py), which also reads other processes' changes."""

    def save(self, change: Change) -> None:
        """Saves a change whole; a shared store raises StaleState when it holds a newer version."""

    def fetch(self, ids: list[str]) -> Snapshot:
        """Some documents, as another process's announced change names them (shared stores)."""
        ...

    def import_if_empty(self, documents: list[dict[str, Any]], version: int) -> bool:
        """Fills an empty shared store; False when it was not empty."""
        ...


class FileStorage:
    """The embedded default: knowledge.json, rewritten atomically on every change. One process owns it, so it is
    never behind: nothing to catch up with or fetch."""

    shared = False

    def __init__(self, path: str) -> None:
        self.path = path

    def stored_version(self) -> int | None:
        return None

    def load(self, restore: Snapshot | None = None) -> Snapshot | None:
        return None

    def fetch(self, ids: list[str]) -> Snapshot:
        raise NotImplementedError("knowledge.json is not shared")

    def import_if_empty(self, documents: list[dict[str, Any]], version: int) -> bool:
        raise NotImplementedError("knowledge.json is not shared")

    def save(self, change: Change) -> None:
        data = {"version": change.version, "documents": list(change.documents.values())}
        write_atomically(self.path, (json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode())


def validate_document(data: Any, max_chars: int, where: str = "document") -> dict[str, Any]:
    """Returns the document in its normal form, or raises KnowledgeError naming the field."""
    if not isinstance(data, dict):
        raise KnowledgeError(f"{where} must be a JSON object.")
    unknown = set(data) - _FIELDS
    if unknown:
        raise KnowledgeError(f"{where} has unknown field(s): {', '.join(sorted(unknown))}.", field=sorted(unknown)[0])
    doc_id = data.get("id")
    if not isinstance(doc_id, str) or not _ID.match(doc_id):
        raise KnowledgeError(f"{where}: 'id' must be 1-64 letters, digits, '-' or '_'.", field="id")
    where = f"document {doc_id!r}"
    content = data.get("content")
    if not isinstance(content, str) or not content.strip():
        raise KnowledgeError(f"{where}: 'content' is required and must be non-empty text.", field="content")
    if len(content) > max_chars:
        raise KnowledgeError(
            f"{where}: 'content' is longer than {max_chars} characters (MAX_DOCUMENT_CHARS); split it into several "
            "documents.",
            field="content",
            status=413,
        )
    title = data.get("title", "")
    if not isinstance(title, str) or len(title) > MAX_TITLE_CHARS:
        raise KnowledgeError(f"{where}: 'title' must be text of at most {MAX_TITLE_CHARS} characters.", field="title")
    tags = data.get("tags", [])
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise KnowledgeError(f"{where}: 'tags' must be a list of at most {MAX_TAGS} tags.", field="tags")
    for tag in tags:
        if not isinstance(tag, str) or not 0 < len(tag) <= MAX_TAG_CHARS:
            raise KnowledgeError(
                f"{where}: the tag {tag!r} must be text of 1 to {MAX_TAG_CHARS} characters.", field="tags"
            )
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise KnowledgeError(f"{where}: 'enabled' must be true or false.", field="enabled")
    return {"id": doc_id, "title": title.strip(), "content": content.strip(), "tags": tags, "enabled": enabled}


class KnowledgeBase:
    def __init__(
        self,
        path: str,
        *,
        storage: KnowledgeStorage | None = None,
        max_documents: int = 20000,
        max_document_chars: int = 100_000,
    ) -> None:
        """`storage` saves each change: knowledge.json at `path` (the default), or the shared store (Redis), which
        also reads other processes' changes (`refresh`, `apply_remote`)."""
        self.path = path
        self.storage = storage or FileStorage(path)
        self.max_documents = max_documents
        self.max_document_chars = max_document_chars
        self.version = 0
        self._documents: dict[str, dict[str, Any]] = {}  # insertion order is the file's order
        self._changed_at: dict[str, int] = {}
        self._lock = threading.Lock()  # writers may run in a worker thread; readers see whole states
        self._listeners: list[Listener] = []

    # Loading and saving -------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, path: str, *, seed: str | None = None, storage: KnowledgeStorage | None = None, **limits: int
    ) -> KnowledgeBase:
        """Reads `path`. A missing file starts as a copy of `seed` (the shipped knowledge base), or empty.
        Raises KnowledgeError for an invalid file.

        With a shared `storage`, the file (else `seed`) is only imported into it when it holds no knowledge base
        yet, and the shared one is what this process then serves."""
        base = cls(path, storage=storage, **limits)
        remove_stale_temporaries(os.path.dirname(os.path.abspath(path)))
        if base.storage.shared and base.storage.stored_version() is not None:
            base.refresh()  # a deployment that has its knowledge base already: the file is not read
            return base
        source = path if os.path.exists(path) else seed
        if source is not None and not os.path.exists(source):
            source = None
        documents, version = base.read_file(source) if source else ([], 0)
        if base.storage.shared:
            base.storage.import_if_empty(documents, max(version, 1))
            base.refresh()
            return base
        base._install(Snapshot(documents, dict.fromkeys((d["id"] for d in documents), 0), version))
        if source not in (None, path):
            base._save(base._documents, (), ())  # the operator's own copy, from now on
        return base

    def read_file(self, source: str) -> tuple[list[dict[str, Any]], int]:
        data = read_json_file(source, None, KnowledgeError)  # its documents are checked one by one, below
        documents = self.parse_file_data(data, where=source)
        version = data["version"] if isinstance(data.get("version"), int) and data["version"] > 0 else 0
        return documents, version

    def parse_file_data(self, data: Any, where: str = "knowledge base") -> list[dict[str, Any]]:
        if not isinstance(data, dict) or not isinstance(data.get("documents"), list):
            raise KnowledgeError(f'{where}: expected {{"documents": [...]}}.')
        documents = data["documents"]
        if len(documents) > self.max_documents:
            raise KnowledgeError(f"{where}: {len(documents)} documents, more than the limit of {self.max_documents}.")
        seen: set[str] = set()
        result = []
        for position, raw in enumerate(documents):
            try:
                document = validate_document(raw, self.max_document_chars, where=f"document #{position + 1}")
            except KnowledgeError as exc:
                raise KnowledgeError(f"{where}: {exc}", field=exc.field) from None
            if document["id"] in seen:
                raise KnowledgeError(f"{where}: document id {document['id']!r} appears twice.", field="id")
            seen.add(document["id"])
            result.append(document)
        return result

    def _save(
        self, documents: dict[str, dict[str, Any]], changed: Iterable[str], deleted: Iterable[str], everything=False
    ) -> None:
        """Saves the new state, then makes it current: a failed save changes neither memory nor the store.
        Raises StaleState when the shared store moved on meanwhile."""
        change = Change(documents, self.version + 1, tuple(changed), tuple(deleted), everything)
        self.storage.save(change)
        self._documents, self.version = documents, change.version
        if everything:
            self._changed_at = dict.fromkeys(documents, change.version)
        for doc_id in change.changed:
            self._changed_at[doc_id] = change.version
        for doc_id in change.deleted:
            self._changed_at.pop(doc_id, None)
        self._tell_listeners()

    def _change(self, make: Callable[[], tuple[dict[str, dict[str, Any]], list[str], list[str]]], everything=False):
        """Makes a change from the current state (`make` validates against it and returns the new documents, the
        changed ids and the deleted ids), made again from the newer state when another process changed the shared
        state first (llmserver.versioned)."""

        def commit_once() -> None:
            documents, changed, deleted = make()
            self._save(documents, changed, deleted, everything)

        conflict = KnowledgeError("The knowledge base is being changed elsewhere right now; try again.", status=409)
        change_with_retries(self._lock, commit_once, self.refresh, conflict)

    def _install(self, snapshot: Snapshot) -> None:
        self._documents = {d["id"]: d for d in snapshot.documents}
        self._changed_at = dict(snapshot.changed_at)
        self.version = snapshot.version
        self._tell_listeners()

    def refresh(self) -> bool:
        """Catches up with the shared store (when it changed, or lost its data and is re-filled from this copy).
        Returns whether anything changed here."""
        snapshot = newer_state(self.storage, self.version, self._snapshot)
        with self._lock:
            if snapshot is None or snapshot.version == self.version:
                return False
            self._install(snapshot)
            return True

    def _snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(list(self._documents.values()), dict(self._changed_at), self.version)

    def apply_remote(self, version: int, changed: list[str], deleted: list[str]) -> None:
        """Another process's change, as it announced it: applied by reading just those documents when it is the
        next version, else by re-reading everything."""
        with self._lock:
            if version <= self.version:
                return
            next_version = version == self.version + 1
        if next_version:
            found = self.storage.fetch(changed)
            with self._lock:
                if found.version == version and self.version == version - 1:
                    documents = {k: v for k, v in self._documents.items() if k not in deleted}
                    documents.update({d["id"]: d for d in found.documents})
                    self._documents = documents
                    for doc_id in deleted:
                        self._changed_at.pop(doc_id, None)
                    self._changed_at.update(found.changed_at)
                    self.version = version
                    self._tell_listeners()
                    return
        self.refresh()

    def subscribe(self, listener: Listener) -> None:
        """Calls `listener(documents, version)` now and after every change, in the thread that made it."""
        self._listeners.append(listener)
        listener(list(self._documents.values()), self.version)

    def _tell_listeners(self) -> None:
        documents = list(self._documents.values())
        for listener in self._listeners:
            listener(documents, self.version)

    # Reading ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._documents)

    def list(self) -> list[dict[str, Any]]:
        return [self._with_version(d) for d in self._documents.values()]

    def get(self, doc_id: str) -> dict[str, Any]:
        document = self._documents.get(doc_id)
        if document is None:
            raise DocumentNotFound(doc_id)
        return self._with_version(document)

    def _with_version(self, document: dict[str, Any]) -> dict[str, Any]:
        return {**copy.deepcopy(document), "changed_at_version": self._changed_at.get(document["id"], 0)}

    def export(self) -> dict[str, Any]:
        return {"version": self.version, "documents": copy.deepcopy(list(self._documents.values()))}

    def documents(self) -> list[dict[str, Any]]:
        return list(self._documents.values())

    # Changing -----------------------------------------------------------------------------------------------

    def add(self, data: Any) -> dict[str, Any]:
        document = validate_document(data, self.max_document_chars)
        doc_id = document["id"]

        def make():
            if doc_id in self._documents:
                raise KnowledgeError(f"A document with id {doc_id!r} already exists.", field="id", status=409)
            if len(self._documents) >= self.max_documents:
                raise KnowledgeError(f"The knowledge base holds its limit of {self.max_documents} documents.")
            return {**self._documents, doc_id: document}, [doc_id], []

        self._change(make)
        return self.get(doc_id)

    def update(self, doc_id: str, data: Any, read_version: int | None = None) -> dict[str, Any]:
        """Replaces a document; with `read_version`, refuses (409) if it changed after that version."""
        if isinstance(data, dict):
            data = {**data, "id": data.get("id", doc_id)}
        document = validate_document(data, self.max_document_chars)
        if document["id"] != doc_id:
            raise KnowledgeError("The document's id cannot be changed.", field="id")

        def make():
            if doc_id not in self._documents:
                raise DocumentNotFound(doc_id)
            changed = self._changed_at.get(doc_id, 0)
            if read_version is not None and changed > read_version:
                raise EditConflict(doc_id, read_version, changed)
            return {**self._documents, doc_id: document}, [doc_id], []

        self._change(make)
        return self.get(doc_id)

    def delete(self, doc_id: str) -> None:
        def make():
            if doc_id not in self._documents:
                raise DocumentNotFound(doc_id)
            return {k: v for k, v in self._documents.items() if k != doc_id}, [], [doc_id]

        self._change(make)

    def replace_all(self, data: Any) -> None:
        """Imports a whole knowledge.json: all of it is validated before anything changes."""
        documents = {d["id"]: d for d in self.parse_file_data(data, where="imported file")}
        self._change(lambda: (documents, list(documents), []), everything=True)
