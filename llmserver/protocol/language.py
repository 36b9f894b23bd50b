"""The language a caller speaks, as the words the server says itself (the waiting message, a tool's filler) need it:
read from the script of the last user message. Chinese, Japanese and Korean are told apart by their scripts; any
other text is "en", the language of the defaults and of the messages an operator gives untagged."""

from __future__ import annotations

import re

_KANA = re.compile(r"[\u3040-\u30ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
LANGUAGE_TAG = re.compile(r"^([a-z]{2})(?:-[A-Za-z]{2})?:")


def language_of(text: str) -> str:
    """ "zh", "ja", "ko" or "en"; a text mostly in Latin letters with a Chinese name in it stays "en"."""
    sample = text[:400]
    if _KANA.search(sample):
        return "ja"
    if _HANGUL.search(sample):
        return "ko"
    han = len(_HAN.findall(sample))
    return "zh" if han and han >= len(_LATIN.findall(sample)) / 4 else "en"


def by_language(texts: tuple[str, ...] | list[str]) -> dict[str, tuple[str, ...]]:
    """Texts an operator gives, each optionally tagged with its language ("zh:请稍等……"), grouped by language;
    untagged ones under "en"."""
    grouped: dict[str, list[str]] = {}
    for text in texts:
        match = LANGUAGE_TAG.match(text)
        language, said = (match.group(1), text[match.end() :].strip()) if match else ("en", text.strip())
        if said:
            grouped.setdefault(language, []).append(said)
    return {language: tuple(said) for language, said in grouped.items()}


def in_language(texts: dict[str, tuple[str, ...]], language: str) -> tuple[str, ...]:
    """The texts for `language`, else the English ones, else any."""
    return texts.get(language) or texts.get("en") or next(iter(texts.values()), ())
