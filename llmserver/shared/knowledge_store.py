"""The knowledge base in Redis: every document in one hash, the version beside it.

A change is one Lua script: it checks that the version is still the one the change was made from (else the
process is behind: StaleState, and the knowledge base re-reads and tries again, so conflicting edits from two
instances are detected as they are within one), writes the documents, bumps the version and publishes the change,
all at once: no process can see the change without its announcement or the other way round.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..files import StaleState
from ..knowledge.store import Change, KnowledgeError, Snapshot, validate_document
from .redis_state import REDIS_ERRORS, SharedState

logger = logging.getLogger("llmserver.shared")

# KEYS: documents hash, version. ARGV: expected version, new version, everything (1/0), channel, event,
# number of documents written, then (id, JSON) pairs, then the ids deleted.
SAVE = """
local current = tonumber(redis.call('GET', KEYS[2]) or '-1')
if current ~= tonumber(ARGV[1]) then return 0 end
if ARGV[3] == '1' then redis.call('DEL', KEYS[1]) end
local i = 7
for _ = 1, tonumber(ARGV[6]) do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
  i = i + 1
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""

# KEYS: documents hash, version. ARGV: version, channel, event, then (id, JSON) pairs. Only into an empty store.
IMPORT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('DEL', KEYS[1])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""


class RedisKnowledgeStorage:
    shared = True

    def __init__(self, state: SharedState, max_document_chars: int) -> None:
        self.state = state
        self.max_document_chars = max_document_chars
        self.documents_key = state.key("kb:documents")
        self.version_key = state.key("kb:version")
        self._save = state.sync.register_script(SAVE)
        self._import = state.sync.register_script(IMPORT)
        self._positions: dict[str, int] = {}  # the documents' order, as stored

    def _entry(self, document: dict[str, Any], version: int, position: int) -> str:
        return json.dumps({"document": document, "changed_at": version, "position": position}, ensure_ascii=False)

    def save(self, change: Change) -> None:
        if change.everything:
            positions = {doc_id: index for index, doc_id in enumerate(change.documents)}
        else:
            positions = dict(self._positions)
            following = max(positions.values(), default=-1) + 1
            for doc_id in change.changed:
                if doc_id not in positions:
                    positions[doc_id] = following
                    following += 1
            for doc_id in change.deleted:
                positions.pop(doc_id, None)
        written = [
            (doc_id, self._entry(change.documents[doc_id], change.version, positions[doc_id]))
            for doc_id in change.changed
        ]
        event = self.state.event(
            "knowledge",
            version=change.version,
            changed=list(change.changed),
            deleted=list(change.deleted),
            everything=change.everything,
        )
        arguments = [change.version - 1, change.version, int(change.everything), self.state.channel, event]
        arguments.append(len(written))
        for pair in written:
            arguments.extend(pair)
        arguments.extend(change.deleted)
        try:
            saved = self._save(keys=[self.documents_key, self.version_key], args=arguments)
        except REDIS_ERRORS:
            raise self.state.unavailable() from None
        if not saved:
            raise StaleState()
        self._positions = positions

    def stored_version(self) -> int | None:
        """The store's version (None: it holds nothing)."""
        return self.state.stored_version(self.version_key)

    def import_if_empty(self, documents: list[dict[str, Any]], version: int) -> bool:
        """Fills an empty store (the first start of a deployment, or a Redis that lost its data) with `documents`."""
        arguments: list[Any] = [version, self.state.channel]
        arguments.append(self.state.event("knowledge", version=version, changed=[], deleted=[], everything=True))
        for position, document in enumerate(documents):
            arguments.extend((document["id"], self._entry(document, version, position)))
        try:
            imported = bool(self._import(keys=[self.documents_key, self.version_key], args=arguments))
        except REDIS_ERRORS:
            raise self.state.unavailable() from None
        if imported:
            logger.info("shared store: knowledge base imported (%d documents, version %d)", len(documents), version)
        return imported

    def load(self, restore: Snapshot | None = None) -> Snapshot:
        """Everything, as of one version. A store that lost its data is first re-filled from `restore`."""
        try:
            if restore is not None:
                self.import_if_empty(restore.documents, max(restore.version, 1))
            with self.state.sync.pipeline(transaction=True) as pipe:
                version, entries = pipe.get(self.version_key).hgetall(self.documents_key).execute()
        except REDIS_ERRORS:
            raise self.state.unavailable() from None
        documents = self._decode(entries)
        self._positions = {doc_id: position for doc_id, (_, _, position) in documents.items()}
        ordered = sorted(documents.values(), key=lambda item: item[2])
        return Snapshot(
            [document for document, _, _ in ordered],
            {document["id"]: changed_at for document, changed_at, _ in ordered},
            int(version or 0),
        )

    def fetch(self, ids: list[str]) -> Snapshot:
        """Just these documents (the ones a change announced), with the version they were read at."""
        try:
            with self.state.sync.pipeline(transaction=True) as pipe:
                pipe.get(self.version_key)
                if ids:
                    pipe.hmget(self.documents_key, ids)
                replies = pipe.execute()
        except REDIS_ERRORS:
            raise self.state.unavailable() from None
        values = replies[1] if ids else []
        documents = self._decode({doc_id: value for doc_id, value in zip(ids, values, strict=True) if value})
        if len(documents) != len(ids):
            return Snapshot([], {}, -1)  # changed again meanwhile: the caller re-reads everything
        for doc_id, (_, _, position) in documents.items():
            self._positions[doc_id] = position
        return Snapshot(
            [document for document, _, _ in documents.values()],
            {doc_id: changed_at for doc_id, (_, changed_at, _) in documents.items()},
            int(replies[0] or 0),
        )

    def _decode(self, entries: dict[Any, Any]) -> dict[str, tuple[dict[str, Any], int, int]]:
        """Stored entries, checked as a file's documents are: an entry that is not valid is left out and logged."""
        documents = {}
        for raw_id, raw in entries.items():
            doc_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            try:
                entry = json.loads(raw)
                document = validate_document(entry["document"], self.max_document_chars)
                documents[document["id"]] = (document, int(entry["changed_at"]), int(entry["position"]))
            except (ValueError, KeyError, TypeError, KnowledgeError) as exc:
                logger.warning("shared store: knowledge document %r is not valid and is left out: %s", doc_id, exc)
        return documents
