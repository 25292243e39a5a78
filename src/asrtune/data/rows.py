"""What corpus readers produce and what cleaning drops: source rows, word timings, dropped rows.

A :class:`SourceRow` is one utterance as a corpus describes it, before anything is checked: its
audio may be missing, its text empty, its timing wrong. A :class:`Dropped` is a row (or a piece of
one) that ``asrtune prepare`` left out, with the registered reason and a human-readable detail.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Word", "Span", "SourceRow", "Dropped"]


@dataclass(frozen=True, kw_only=True)
class Word:
    """One word with its timing in the recording, seconds from the start of the file.

    Attributes:
        score: how well the audio supports the word, 0..1 (forced alignment: the geometric mean of its tokens'
            probabilities; None when the corpus gave the time).
        heard: False when forced alignment found no audio for it (text the recording does not contain).
    """

    text: str
    start: float
    end: float
    score: float | None = None
    heard: bool = True


@dataclass(frozen=True, kw_only=True)
class Span:
    """A stretch of text with known times (a subtitle cue, a sentence), seconds from the start of the file."""

    text: str
    start: float
    end: float


@dataclass(frozen=True, kw_only=True)
class SourceRow:
    """One utterance as read from a corpus.

    Attributes:
        id: utterance id (unique within the source when the corpus gives one).
        audio: absolute path of the audio file.
        text: transcript as written.
        language: language code, if the corpus says.
        start: start of the utterance within the file, seconds (Kaldi ``segments``, NeMo ``offset``).
        end: end of the utterance within the file, seconds; None means the end of the file.
        words: word timings, seconds from the start of the file (lets long audio be split).
        spans: timed stretches of text inside the row (subtitle cues), seconds from the start of the file: the
            row is cut into pieces of whole spans, and they are the pieces' segments.
        aligned: the word timings come from forced alignment (pieces are then scored and may be dropped).
        source: the file the row was read from (for messages and the report).
        line: the row's line number in ``source`` (1-based), when it has one.
    """

    id: str
    audio: str
    text: str
    language: str | None = None
    start: float | None = None
    end: float | None = None
    words: tuple[Word, ...] = ()
    spans: tuple[Span, ...] = ()
    aligned: bool = False
    source: str = ""
    line: int | None = None

    @property
    def is_segment(self) -> bool:
        """True when the row is a stretch of its file rather than the whole file."""
        return self.start is not None or self.end is not None


@dataclass(frozen=True, kw_only=True)
class Dropped:
    """A row, or a piece of a split row, left out of the prepared manifest.

    Attributes:
        reason: a registered cleaning-rule name (``asrtune.data.clean.RULES``).
        detail: what exactly was wrong with this row.
        id: utterance (or piece) id, when known.
        line: line number in ``source``, when the row has one.
        source: the file the row came from.
        audio: the audio path the row named, when known.
        seconds: audio duration dropped (0 when the audio could not be measured).
    """

    reason: str
    detail: str
    id: str | None = None
    line: int | None = None
    source: str | None = None
    audio: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """The report entry: ``line`` and/or ``id``, ``audio``, ``reason``, ``detail`` (and where)."""
        entry: dict = {}
        if self.line is not None:
            entry["line"] = self.line
        if self.id is not None:
            entry["id"] = self.id
        entry["audio"] = self.audio
        entry["reason"] = self.reason
        entry["detail"] = self.detail
        if self.source:
            entry["source"] = self.source
        entry["seconds"] = round(self.seconds, 3)
        return entry

    @classmethod
    def of(cls, row: SourceRow, reason: str, detail: str, seconds: float = 0.0) -> Dropped:
        """A dropped entry for a whole source row."""
        return cls(
            reason=reason,
            detail=detail,
            id=row.id,
            line=row.line,
            source=row.source,
            audio=row.audio,
            seconds=seconds,
        )
