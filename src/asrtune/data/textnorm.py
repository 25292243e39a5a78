"""Optional transcript normalisation for ``asrtune prepare --normalize nfc,lower,punct``.

Each step is registered in :data:`NORMALIZERS`; steps run in the order given, and the prepare
report records which ran and how many transcripts each changed (with examples), so the
normalised manifest never differs from its source without saying so.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from asrtune.registry import Registry

__all__ = ["NORMALIZERS", "parse_steps", "normalize"]

NORMALIZERS: Registry[Callable[[str], str]] = Registry("text normalisation step")


@NORMALIZERS.register("nfc")
def nfc(text: str) -> str:
    """Unicode NFC: one code point for é, not e + combining accent (tokenizers see them differently)."""
    return unicodedata.normalize("NFC", text)


@NORMALIZERS.register("lower")
def lower(text: str) -> str:
    """Lower case."""
    return text.lower()


_WORD_INNER = re.compile(r"(?<=\w)['’\-](?=\w)")


@NORMALIZERS.register("punct")
def punct(text: str) -> str:
    """Remove punctuation (Unicode categories P*), keeping apostrophes and hyphens inside words."""
    kept = _WORD_INNER.sub(lambda m: "\0" + str(ord(m.group())) + "\0", text)
    stripped = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in kept)
    restored = re.sub(r"\0(\d+)\0", lambda m: chr(int(m.group(1))), stripped)
    return " ".join(restored.split())


@NORMALIZERS.register("spaces")
def spaces(text: str) -> str:
    """Collapse runs of whitespace to one space and strip both ends."""
    return " ".join(text.split())


def parse_steps(spec: str | None) -> tuple[str, ...]:
    """``"nfc,lower"`` -> ("nfc", "lower"); every name must be registered.

    Raises:
        AsrtuneError: an unknown step.
    """
    steps = tuple(part.strip() for part in (spec or "").split(",") if part.strip())
    for step in steps:
        NORMALIZERS.get(step)
    return steps


def normalize(text: str, steps: tuple[str, ...]) -> str:
    """Apply the named steps in order."""
    for step in steps:
        text = NORMALIZERS.get(step)(text)
    return text
