"""JSON-lines manifests: asrtune's own and NeMo's.

* asrtune: ``{"audio", "text", "id"?, "language"?, "duration"?, "words"?}``; ``audio`` relative to
  the manifest's folder or absolute. ``words`` (``[{"word", "start", "end"}]``) lets rows over
  30 s be split.
* NeMo: ``{"audio_filepath", "text", "duration", "offset"?, "lang"?}``. With ``offset`` the row is
  the stretch ``[offset, offset + duration]`` of the file, as NeMo reads it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from asrtune.data.formats.base import (
    FORMATS,
    Format,
    ReadContext,
    invalid,
    number_or_none,
    parse_words,
    resolve_audio,
)
from asrtune.data.rows import Dropped, SourceRow

__all__ = ["AsrtuneJsonl", "NemoManifest", "first_json_object"]

_SUFFIXES = (".jsonl", ".json", ".ndjson")


def first_json_object(path: Path, max_lines: int = 50) -> dict | None:
    """The first line of a JSON-lines file that parses to an object (None if none in ``max_lines``)."""
    if not path.is_file():
        return None
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, raw in enumerate(handle):
            if number >= max_lines:
                break
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None


def _lines(path: Path) -> Iterator[tuple[int, object | Dropped]]:
    """(line number, parsed value or an invalid-line entry) for every non-blank line."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw)
            except json.JSONDecodeError as error:
                yield number, invalid(path, number, f"not valid JSON ({error.msg})")


def _language(row: dict, *keys: str) -> str | None:
    for key in keys:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _read(path: Path, audio_key: str, parse) -> Iterator[SourceRow | Dropped]:
    folder = path.resolve().parent
    for number, value in _lines(path):
        if isinstance(value, Dropped):
            yield value
            continue
        if not isinstance(value, dict):
            yield invalid(path, number, "expected a JSON object")
            continue
        missing = [key for key in (audio_key, "text") if key not in value]
        if missing:
            yield invalid(path, number, f"missing {', '.join(missing)}")
            continue
        if not isinstance(value[audio_key], str) or not isinstance(value["text"], str):
            yield invalid(path, number, f"{audio_key} and text must be strings")
            continue
        audio = resolve_audio(value[audio_key], folder)
        try:
            yield parse(value, audio, path, number)
        except ValueError as error:
            yield invalid(path, number, str(error), audio=audio)


@FORMATS.register("jsonl")
class AsrtuneJsonl(Format):
    name = "jsonl"
    description = "asrtune JSONL manifest (audio, text, id?, language?, words?)"

    def detect(self, src: Path) -> bool:
        if src.suffix.lower() not in _SUFFIXES:
            return False
        first = first_json_object(src)
        return first is not None and "audio" in first and "audio_filepath" not in first

    def read(self, src: Path, context: ReadContext) -> Iterator[SourceRow | Dropped]:
        def parse(row: dict, audio: str, path: Path, number: int) -> SourceRow:
            return SourceRow(
                id=str(row.get("id") or f"{path.stem}-{number}"),
                audio=audio,
                text=row["text"],
                language=_language(row, "language"),
                words=parse_words(row.get("words")),
                source=str(path),
                line=number,
            )

        yield from _read(src, "audio", parse)


@FORMATS.register("nemo")
class NemoManifest(Format):
    name = "nemo"
    description = "NeMo JSON-lines manifest (audio_filepath, text, duration, offset?)"

    def detect(self, src: Path) -> bool:
        if src.suffix.lower() not in _SUFFIXES:
            return False
        first = first_json_object(src)
        return first is not None and "audio_filepath" in first

    def read(self, src: Path, context: ReadContext) -> Iterator[SourceRow | Dropped]:
        def parse(row: dict, audio: str, path: Path, number: int) -> SourceRow:
            offset = number_or_none(row.get("offset"), "offset")
            duration = number_or_none(row.get("duration"), "duration")
            start = end = None
            if offset is not None:
                if duration is None or duration <= 0:
                    raise ValueError("offset without a positive duration: the stretch of audio is unknown")
                start, end = offset, offset + duration
            utt_id = row.get("id") or row.get("utt_id") or f"{path.stem}-{number}"
            return SourceRow(
                id=str(utt_id),
                audio=audio,
                text=row["text"],
                language=_language(row, "lang", "language"),
                start=start,
                end=end,
                words=parse_words(row.get("words")),
                source=str(path),
                line=number,
            )

        yield from _read(src, "audio_filepath", parse)
