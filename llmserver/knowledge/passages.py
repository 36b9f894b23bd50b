"""Passages: the pieces of documents that retrieval ranks and the RAG endpoint injects.

Documents stay whole in the store (operators edit documents); the index is built over passages derived from them.
A document is split on its headings (markdown `#` lines, or short lines such as "3. Cancellation"), then into
paragraphs, which are packed into passages of up to PASSAGE_CHARS; a paragraph longer than that is cut at sentence
ends, and a passage that continues a cut paragraph starts with the last sentence before the cut (the overlap).
A short document is one passage. Each passage carries its document's title and the heading it sits under.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

PASSAGE_CHARS = 500  # the most a passage holds, a little overlap included (chosen on the eval)
MIN_PASSAGE_CHARS = 200  # a smaller tail joins the passage before it
OVERLAP_CHARS = 160  # at most this much of a cut paragraph is repeated at the start of the next passage

_MARKDOWN_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_NUMBERED_HEADING = re.compile(r"^\s*(?:\d+(?:\.\d+)*\.?|[IVX]+\.|第[一二三四五六七八九十百]+[章条节])\s+\S.{0,80}$")
# Sentence ends in English and Chinese; the delimiter stays with its sentence.
_SENTENCE_END = re.compile(r"(?<=[.!?。！？;；])\s+|(?<=[。！？；])")


@dataclass(frozen=True, slots=True)
class Passage:
    doc_id: str
    number: int  # 1-based within the document
    title: str  # the document's
    heading: str  # the section it sits under ("" for none)
    text: str

    @property
    def id(self) -> str:
        return f"{self.doc_id}#{self.number}"

    @property
    def indexed_text(self) -> str:
        """What is ranked and embedded: the passage with the title and heading that say what it is about."""
        return "\n".join(part for part in (self.title, self.heading, self.text) if part)

    @property
    def fingerprint(self) -> str:
        """Identifies the indexed text (its embedding is cached under it)."""
        return hashlib.sha256(self.indexed_text.encode("utf-8")).hexdigest()[:32]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "doc_id": self.doc_id, "number": self.number, "heading": self.heading, "text": self.text}


def _is_heading(line: str) -> str | None:
    match = _MARKDOWN_HEADING.match(line)
    if match:
        return match.group(1).strip()
    stripped = line.strip()
    if _NUMBERED_HEADING.match(stripped) and not stripped.endswith((".", "。", ",", "，")):
        return stripped
    return None


def _sections(content: str) -> list[tuple[str, list[str]]]:
    """(heading, paragraphs) in order; paragraphs are separated by blank lines."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    paragraph: list[str] = []

    def end_paragraph() -> None:
        if paragraph:
            sections[-1][1].append(" ".join(line.strip() for line in paragraph))
            paragraph.clear()

    for line in content.splitlines():
        heading = _is_heading(line)
        if heading is not None:
            end_paragraph()
            sections.append((heading, []))
        elif not line.strip():
            end_paragraph()
        else:
            paragraph.append(line)
    end_paragraph()
    return [(heading, paragraphs) for heading, paragraphs in sections if paragraphs]


def _sentences(paragraph: str) -> list[str]:
    pieces = [piece.strip() for piece in _SENTENCE_END.split(paragraph) if piece.strip()]
    result = []
    for piece in pieces:  # a "sentence" longer than a passage is cut where it must be
        while len(piece) > PASSAGE_CHARS - OVERLAP_CHARS:
            cut = piece.rfind(" ", 0, PASSAGE_CHARS - OVERLAP_CHARS)
            cut = cut if cut > PASSAGE_CHARS // 2 else PASSAGE_CHARS - OVERLAP_CHARS
            result.append(piece[:cut].strip())
            piece = piece[cut:].strip()
        if piece:
            result.append(piece)
    return result


def _join(parts: Iterable[str]) -> str:
    text = ""
    for part in parts:
        if text and not (text[-1] in "。！？；" or part[:1] in "。！？；"):
            text += " "
        text += part
    return text


def _pack(paragraphs: list[str]) -> list[str]:
    """Paragraphs packed into texts of at most PASSAGE_CHARS, long paragraphs cut at sentences with overlap."""
    texts: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in paragraphs:
        if len(paragraph) <= PASSAGE_CHARS:
            if size and size + 1 + len(paragraph) > PASSAGE_CHARS:
                texts.append("\n".join(current))
                current, size = [], 0
            current.append(paragraph)
            size += len(paragraph) + (1 if size else 0)
            continue
        # A long paragraph: fill with its sentences, carrying the last one over when a passage ends.
        sentences = _sentences(paragraph)
        piece: list[str] = []
        for sentence in sentences:
            candidate = _join([*piece, sentence])
            if size + len(candidate) + (1 if size else 0) > PASSAGE_CHARS and (piece or current):
                texts.append("\n".join([*current, _join(piece)] if piece else current))
                current, size = [], 0
                last = piece[-1] if piece else ""
                piece = [last] if last and len(last) <= OVERLAP_CHARS else []
            piece.append(sentence)
        if piece:
            current.append(_join(piece))
            size += len(current[-1]) + (1 if size else 0)
    if current:
        texts.append("\n".join(current))
    if (
        len(texts) > 1
        and len(texts[-1]) < MIN_PASSAGE_CHARS
        and len(texts[-2]) + len(texts[-1]) <= PASSAGE_CHARS * 1.25
    ):
        texts[-2:] = [texts[-2] + "\n" + texts[-1]]
    return texts


def split_document(document: Mapping[str, Any]) -> list[Passage]:
    """The passages of one document, numbered from 1."""
    doc_id, title, content = document["id"], document.get("title", ""), document["content"]
    if len(content) <= PASSAGE_CHARS:
        return [Passage(doc_id, 1, title, "", " ".join(content.split()))]
    passages: list[Passage] = []
    for heading, paragraphs in _sections(content):
        for text in _pack(paragraphs):
            passages.append(Passage(doc_id, len(passages) + 1, title, heading, text))
    return passages
