"""Language tags, read once: BCP-47 (``en-US``, ``pt_BR``), ISO 639-1 codes and Whisper's names.

Whisper knows languages by ISO 639-1 code (``en``, ``sw``) and by English name (``english``,
``swahili``, plus aliases such as ``castilian``). Users and corpora write ``en-US``, ``en_GB``,
``English`` or ``EN``. :func:`canonical_language` maps all of them to the code Whisper's tokenizer
and asrtune's normalisers use, so one utterance never gets two treatments for one language.
"""

from __future__ import annotations

import re
from functools import lru_cache

from asrtune.errors import AsrtuneError

__all__ = ["canonical_language", "parse_new_language", "is_known_language", "MULTI"]

MULTI = "multi"  # a set whose utterances are in several languages


@lru_cache(maxsize=None)
def canonical_language(tag: str | None) -> str | None:
    """Whisper's code for a language tag; None stays None (English by asrtune's convention).

    ``en-US``, ``en_GB``, ``EN``, ``English`` and ``english`` all give ``en``; ``sw-KE`` gives ``sw``;
    Whisper's aliases (``castilian``, ``mandarin``) give their codes. ``multi`` is kept. A tag
    Whisper does not know keeps its primary subtag, lower-cased (``xx-YY`` -> ``xx``), so it is
    still compared alike everywhere.
    """
    if tag is None:
        return None
    text = str(tag).strip().lower().replace("_", "-")
    if not text:
        return None
    if text == MULTI:
        return MULTI
    # late: config and manifests call this, and must not pay for importing transformers
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    if text in TO_LANGUAGE_CODE:  # a Whisper name: english, swahili, castilian ...
        return TO_LANGUAGE_CODE[text]
    primary = text.split("-", 1)[0]
    if primary in LANGUAGES:
        return primary
    if primary in TO_LANGUAGE_CODE:  # "english-us", however unlikely
        return TO_LANGUAGE_CODE[primary]
    return primary


def is_known_language(code: str) -> bool:
    """Whether a canonical code (see :func:`canonical_language`) is a language some model family knows: one of
    Whisper's, or one of Qwen3-ASR's (its list adds Filipino)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    if code in LANGUAGES:
        return True
    from transformers.models.qwen3_asr.processing_qwen3_asr import LANGUAGE_CODE_TO_NAME

    return code in LANGUAGE_CODE_TO_NAME


_SPEC = re.compile(r"new:(?P<code>[a-z][a-z0-9-]*)\s*,\s*init\s*=\s*(?P<init>[A-Za-z_-]+)")


def parse_new_language(text: str) -> tuple[str, str] | None:
    """``new:ky,init=kk`` -> ``("ky", "kk")``; None when ``text`` is not a ``new:`` spec.

    Raises:
        AsrtuneError: it starts with ``new:`` but is not ``new:CODE,init=CODE``.
    """
    value = str(text).strip()
    if not value.lower().startswith("new:"):
        return None
    match = _SPEC.fullmatch(value.lower())
    if not match:
        raise AsrtuneError(f"language {text!r}: write a new language as new:CODE,init=RELATED (e.g. new:ky,init=kk)")
    return match["code"], match["init"]
