"""Whisper's text normalisers (from the ``whisper-normalizer`` package, which ships the English
spelling table): the English one for English, the basic one for every other language.

Language tags are read by :func:`asrtune.languages.canonical_language` first, so ``en-US``, ``en_GB``
and ``English`` all get the English normaliser."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer

from asrtune.languages import canonical_language

__all__ = ["normalizer_for"]


def normalizer_for(language: str | None) -> Callable[[str], str]:
    """The normaliser for a language tag (None means English; any spelling of a tag, see module doc)."""
    return _normalizer(canonical_language(language))


@lru_cache(maxsize=None)
def _normalizer(code: str | None) -> Callable[[str], str]:
    if code in (None, "en"):
        return EnglishTextNormalizer()
    return BasicTextNormalizer()
