"""Whisper's text normalisers (from the ``whisper-normalizer`` package, which ships the English
spelling table): the English one for English, the basic one for every other language."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer

__all__ = ["normalizer_for"]


@lru_cache(maxsize=None)
def normalizer_for(language: str | None) -> Callable[[str], str]:
    """The normaliser for a language code (None means English)."""
    if language in (None, "en", "english"):
        return EnglishTextNormalizer()
    return BasicTextNormalizer()
