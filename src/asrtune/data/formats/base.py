"""The format interface, the registry, detection, and helpers shared by readers.

A reader turns a corpus into :class:`~asrtune.data.rows.SourceRow` objects and, for lines it
cannot understand, :class:`~asrtune.data.rows.Dropped` entries with reason ``invalid_line`` and the
line number: a bad line never stops the read and is never skipped silently.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from asrtune.data.rows import Dropped, SourceRow, Word
from asrtune.errors import AsrtuneError
from asrtune.registry import Registry

__all__ = [
    "Format",
    "FORMATS",
    "ReadContext",
    "Source",
    "detect_format",
    "read_source",
    "INVALID_LINE",
    "resolve_audio",
    "parse_words",
    "invalid",
    "first_text_column",
    "TEXT_COLUMNS",
    "safe_name",
    "number_or_none",
]

INVALID_LINE = "invalid_line"
TEXT_COLUMNS = ("transcription", "text", "sentence", "transcript", "normalized_text")


@dataclass(frozen=True, kw_only=True)
class ReadContext:
    """What a reader may need besides the source.

    Attributes:
        audio_dir: folder for audio a corpus stores inside itself (a ``datasets`` arrow file), which
            must become files for the manifest to point at. Sources are never modified.
        split: which split of a multi-split source to read (Common Voice folder, ``datasets`` DatasetDict).
        progress: show a progress bar where reading is slow (extracting embedded audio).
    """

    audio_dir: Path
    split: str | None = None
    progress: bool = False


@dataclass(frozen=True, kw_only=True)
class Source:
    """Everything read from one corpus: rows to check, and lines already dropped as invalid."""

    format: str
    path: Path
    rows: tuple[SourceRow, ...]
    dropped: tuple[Dropped, ...] = field(default=())


class Format:
    """One corpus format. Subclasses set ``name`` and ``description`` and implement both methods."""

    name: ClassVar[str]
    description: ClassVar[str]

    def detect(self, src: Path) -> bool:
        """True when ``src`` (file or folder) looks like this format. Must be cheap and never raise."""
        raise NotImplementedError

    def read(self, src: Path, context: ReadContext) -> Iterator[SourceRow | Dropped]:
        """Yield every row in source order; invalid lines as ``Dropped`` (reason ``invalid_line``).

        Raises:
            AsrtuneError: only when the source as a whole cannot be read (a required file is missing).
        """
        raise NotImplementedError


FORMATS: Registry[type[Format]] = Registry("data format")


def detect_format(src: Path) -> str:
    """The one registered format that recognises ``src``.

    Raises:
        AsrtuneError: the source does not exist, no format recognises it, or several do.
    """
    if not src.exists():
        raise AsrtuneError(f"data source not found: {src}")
    matches = [name for name in FORMATS.names() if _safe_detect(FORMATS.get(name)(), src)]
    if not matches:
        raise AsrtuneError(
            f"cannot tell the format of {src}: expected one of {', '.join(FORMATS.names())} "
            "(see `asrtune prepare --help`); name it with --format"
        )
    if len(matches) > 1:
        raise AsrtuneError(
            f"{src} looks like several formats ({', '.join(matches)}): choose one with --format"
        )
    return matches[0]


def _safe_detect(fmt: Format, src: Path) -> bool:
    try:
        return bool(fmt.detect(src))
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def read_source(src: str | Path, context: ReadContext, fmt: str = "auto") -> Source:
    """Read a corpus with the named format (or the detected one when ``fmt`` is ``auto``)."""
    src = Path(src).expanduser()
    if not src.exists():
        raise AsrtuneError(f"data source not found: {src}")
    src = src.resolve()
    name = detect_format(src) if fmt == "auto" else fmt
    reader = FORMATS.get(name)()
    rows: list[SourceRow] = []
    dropped: list[Dropped] = []
    try:
        for item in reader.read(src, context):
            (dropped if isinstance(item, Dropped) else rows).append(item)
    except OSError as error:  # unreadable source as a whole (permissions, a folder where a file belongs)
        raise AsrtuneError(f"cannot read {src} as {name}: {error}") from error
    return Source(format=name, path=src, rows=tuple(rows), dropped=tuple(dropped))


def invalid(
    source: Path | str, line: int | None, detail: str, *, id: str | None = None, audio: str | None = None
) -> Dropped:
    """A ``Dropped`` entry for a line the reader cannot use."""
    return Dropped(reason=INVALID_LINE, detail=detail, line=line, id=id, source=str(source), audio=audio)


def resolve_audio(value: str, *bases: Path) -> str:
    """An absolute audio path: ``value`` as is when absolute, else against the first base where it exists
    (the first base when it exists nowhere, so the missing-file rule reports the natural place)."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    for base in bases:
        if (base / path).exists():
            return str((base / path).resolve())
    return str((bases[0] / path).resolve())


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what} is not a number: {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return number


def parse_words(value: object) -> tuple[Word, ...]:
    """Word timings from a list of ``{"word"|"text", "start", "end"}`` objects.

    Raises:
        ValueError: not a list of such objects, or a word ends before it starts.
    """
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("words must be a list of {word, start, end} objects")
    words = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ValueError(f"words[{i}] is not an object")
        text = item.get("word", item.get("text"))
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"words[{i}] has no word text")
        start, end = (
            _number(item.get("start"), f"words[{i}].start"),
            _number(item.get("end"), f"words[{i}].end"),
        )
        if end < start:
            raise ValueError(f"words[{i}] ends ({end}) before it starts ({start})")
        words.append(Word(text=text.strip(), start=start, end=end))
    return tuple(words)


def first_text_column(columns: list[str] | tuple[str, ...]) -> str | None:
    """The transcript column of a table: the first of :data:`TEXT_COLUMNS` present."""
    return next((name for name in TEXT_COLUMNS if name in columns), None)


def number_or_none(value: object, what: str) -> float | None:
    """A non-negative number, or None for a missing value."""
    return None if value is None or value == "" else _number(value, what)


def safe_name(text: str, limit: int = 120) -> str:
    """A file-name-safe version of an id (letters, digits, ``._-``; others become ``_``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "utt"
    return name[:limit]
