"""Manifests: JSONL, one utterance per line (``audio``, ``text``, optional ``language``, ``id``, ``voice``,
``duration``, ``segments``).

``audio`` is a path relative to the manifest's folder, or absolute. ``segments`` (optional) are timed
stretches of the text, ``[{"start": 0.3, "end": 2.1, "text": "..."}]`` in seconds from the start of the
audio: what timestamp training (``data.timestamps``) and timestamp evaluation read. Rows round-trip:
reading a manifest and writing it elsewhere keeps every row pointing at the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from asrtune.data.rows import Span
from asrtune.errors import AsrtuneError

__all__ = ["Utterance", "read_manifest", "write_manifest", "manifests_digest"]


@dataclass(frozen=True, kw_only=True)
class Utterance:
    """One labelled recording. ``audio`` is always absolute once read."""

    id: str
    audio: str
    text: str
    language: str | None = None
    duration: float | None = None
    voice: str | None = None  # who or what spoke it: an espeak-ng voice, or a recorded speaker
    segments: tuple[Span, ...] = ()  # timed stretches of the text, seconds from the start of the audio

    def to_row(self, relative_to: Path | None = None) -> dict:
        audio = self.audio
        if relative_to is not None:
            try:
                audio = os.path.relpath(self.audio, relative_to)
            except ValueError:  # another drive on Windows
                pass
        row = {"id": self.id, "audio": audio, "text": self.text}
        if self.language:
            row["language"] = self.language
        if self.duration is not None:
            row["duration"] = round(self.duration, 4)
        if self.voice:
            row["voice"] = self.voice
        if self.segments:
            row["segments"] = [{"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
                               for s in self.segments]
        return row


def _row_to_utterance(row: object, line: int, folder: Path, source: Path) -> Utterance:
    if not isinstance(row, dict):
        raise AsrtuneError(f"{source}:{line}: expected a JSON object")
    missing = [key for key in ("audio", "text") if key not in row]
    if missing:
        raise AsrtuneError(f"{source}:{line}: missing {', '.join(missing)}")
    if not isinstance(row["audio"], str) or not isinstance(row["text"], str):
        raise AsrtuneError(f"{source}:{line}: audio and text must be strings")
    audio = Path(row["audio"]).expanduser()
    audio = audio if audio.is_absolute() else folder / audio
    duration = row.get("duration")
    segments = _segments(row.get("segments"), f"{source}:{line}")
    return Utterance(
        id=str(row.get("id") or f"{source.stem}-{line}"),
        audio=str(audio),
        text=row["text"],
        language=row.get("language") or None,
        duration=float(duration) if isinstance(duration, (int, float)) else None,
        voice=str(row["voice"]) if row.get("voice") else None,
        segments=segments,
    )


def _segments(value: object, where: str) -> tuple[Span, ...]:
    """``segments`` of a manifest row: a list of ``{start, end, text}`` in order, each ending after it starts."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise AsrtuneError(f"{where}: segments must be a list of {{start, end, text}} objects")
    spans = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("text", ""), str):
            raise AsrtuneError(f"{where}: segments[{index}] is not a {{start, end, text}} object")
        try:
            start, end = float(item["start"]), float(item["end"])
        except (KeyError, TypeError, ValueError) as error:
            raise AsrtuneError(f"{where}: segments[{index}] needs numeric start and end") from error
        if not 0 <= start <= end:
            raise AsrtuneError(f"{where}: segments[{index}] runs from {start} to {end}")
        if spans and start < spans[-1].start:
            raise AsrtuneError(f"{where}: segments are not in order (segments[{index}])")
        spans.append(Span(text=item.get("text", ""), start=start, end=end))
    return tuple(spans)


def read_manifest(path: str | Path) -> list[Utterance]:
    """Read a JSONL manifest.

    Raises:
        AsrtuneError: the file is missing, or a line is not a valid row (with its line number).
            ``asrtune prepare`` is the forgiving route that drops bad rows with reasons.
    """
    path = Path(path)
    if not path.is_file():
        raise AsrtuneError(f"manifest not found: {path}")
    folder = path.resolve().parent
    rows: list[Utterance] = []
    with path.open(encoding="utf-8") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as error:
                raise AsrtuneError(f"{path}:{line}: not valid JSON ({error.msg})") from error
            rows.append(_row_to_utterance(row, line, folder, path))
    if not rows:
        raise AsrtuneError(f"manifest is empty: {path}")
    return rows


def write_manifest(utterances: list[Utterance], path: str | Path) -> None:
    """Write rows with audio paths relative to the manifest's folder (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.resolve().parent
    staging = path.with_name(path.name + ".tmp")
    with staging.open("w", encoding="utf-8") as handle:
        for utterance in utterances:
            handle.write(json.dumps(utterance.to_row(folder), ensure_ascii=False) + "\n")
    os.replace(staging, path)


def manifests_digest(manifests: dict[str, str]) -> str:
    """A short sha256 of manifests' bytes, by role (a missing file counts as missing).

    Manifests keep audio paths relative to their folder, so a moved folder keeps its digest; an edited
    row, text or audio name changes it (synthesised audio is named by what it says).
    """
    digest = hashlib.sha256()
    for role, path in sorted(manifests.items()):
        file = Path(path)
        digest.update(f"{role}\0".encode())
        digest.update(file.read_bytes() if file.is_file() else b"\0missing")
        digest.update(b"\0")
    return digest.hexdigest()[:12]
