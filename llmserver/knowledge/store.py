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
from collections.abc import Callable
from typing import Any

from ..files import remove_stale_temporaries, write_atomically
from ..protocol.errors import ServiceError
from ..protocol.json_body import InvalidJson, parse_json

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
    def __init__(self, path: str, *, max_documents: int = 20000, max_document_chars: int = 100_000) -> None:
        self.path = path
        self.max_documents = max_documents
        self.max_document_chars = max_document_chars
        self.version = 0
        self._documents: dict[str, dict[str, Any]] = {}  # insertion order is the file's order
        self._changed_at: dict[str, int] = {}
        self._lock = threading.Lock()  # writers may run in a worker thread; readers see whole states
        self._listeners: list[Listener] = []

    # Loading and saving -------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str, *, seed: str | None = None, **limits: int) -> KnowledgeBase:
        """Reads `path`. A missing file starts as a copy of `seed` (the shipped knowledge base), or empty.
        Raises KnowledgeError for an invalid file."""
        base = cls(path, **limits)
        remove_stale_temporaries(os.path.dirname(os.path.abspath(path)))
        source = path if os.path.exists(path) else seed
        if source is None or not os.path.exists(source):
            return base
        try:
            with open(source, "rb") as handle:
                data = parse_json(handle.read(), what=source)
        except OSError as exc:
            raise KnowledgeError(f"{source}: cannot be read ({exc.strerror}).") from None
        except InvalidJson as exc:
            raise KnowledgeError(str(exc)) from None
        base._replace_all(base.parse_file_data(data, where=source))
        if isinstance(data.get("version"), int) and data["version"] > 0:
            base.version = data["version"]
        if source != path:
            base._commit(base._documents, [])  # the operator's own copy, from now on
        return base

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

    def _commit(self, documents: dict[str, dict[str, Any]], changed: list[str]) -> None:
        """Saves the new state, then makes it current: a failed save changes neither memory nor the file."""
        version = self.version + 1
        data = {"version": version, "documents": list(documents.values())}
        write_atomically(self.path, (json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode())
        self._documents, self.version = documents, version
        for doc_id in changed:
            self._changed_at[doc_id] = version
        self._tell_listeners()

    def _replace_all(self, documents: list[dict[str, Any]]) -> None:
        self._documents = {d["id"]: d for d in documents}
        self._changed_at = {d["id"]: 0 for d in documents}
        self._tell_listeners()

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
        with self._lock:
            if document["id"] in self._documents:
                raise KnowledgeError(f"A document with id {document['id']!r} already exists.", field="id", status=409)
            if len(self._documents) >= self.max_documents:
                raise KnowledgeError(f"The knowledge base holds its limit of {self.max_documents} documents.")
            self._commit({**self._documents, document["id"]: document}, [document["id"]])
            return self.get(document["id"])

    def update(self, doc_id: str, data: Any, read_version: int | None = None) -> dict[str, Any]:
        """Replaces a document; with `read_version`, refuses (409) if it changed after that version."""
        if isinstance(data, dict):
            data = {**data, "id": data.get("id", doc_id)}
        document = validate_document(data, self.max_document_chars)
        if document["id"] != doc_id:
            raise KnowledgeError("The document's id cannot be changed.", field="id")
        with self._lock:
            if doc_id not in self._documents:
                raise DocumentNotFound(doc_id)
            changed = self._changed_at.get(doc_id, 0)
            if read_version is not None and changed > read_version:
                raise EditConflict(doc_id, read_version, changed)
            self._commit({**self._documents, doc_id: document}, [doc_id])
            return self.get(doc_id)

    def delete(self, doc_id: str) -> None:
        with self._lock:
            if doc_id not in self._documents:
                raise DocumentNotFound(doc_id)
            remaining = {k: v for k, v in self._documents.items() if k != doc_id}
            self._commit(remaining, [])
            self._changed_at.pop(doc_id, None)

    def replace_all(self, data: Any) -> None:
        """Imports a whole knowledge.json: all of it is validated before anything changes."""
        documents = self.parse_file_data(data, where="imported file")
        with self._lock:
            self._commit({d["id"]: d for d in documents}, [d["id"] for d in documents])
            self._changed_at = {d["id"]: self.version for d in documents}
