"""Tabular corpora: Common Voice TSV splits and Hugging Face audiofolder metadata.

* Common Voice: a split's TSV (``train.tsv``, ``dev.tsv``, ``validated.tsv``, ...) with ``path`` and
  ``sentence`` columns (``locale`` gives the language); clips in ``clips/`` beside the TSV, or in
  the TSV's own folder. Common Voice writes its TSVs unquoted, so they are read that way.
* audiofolder: a folder with ``metadata.csv`` (or ``metadata.jsonl``) whose ``file_name`` column names
  audio relative to the folder and whose transcript is in ``transcription``, ``text`` or ``sentence``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from asrtune.data.formats.base import (
    FORMATS,
    TEXT_COLUMNS,
    Format,
    ReadContext,
    first_text_column,
    invalid,
    resolve_audio,
)
from asrtune.data.rows import Dropped, SourceRow
from asrtune.errors import AsrtuneError

__all__ = ["CommonVoice", "AudioFolder"]

_CV_COLUMNS = {"path", "sentence"}
_METADATA = ("metadata.csv", "metadata.jsonl")


def _tsv_header(path: Path) -> list[str]:
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        return handle.readline().rstrip("\r\n").split("\t")


def _is_cv_tsv(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".tsv" and _CV_COLUMNS <= set(_tsv_header(path))


def _language(row: dict) -> str | None:
    for key in ("language", "locale", "lang"):
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


@FORMATS.register("commonvoice")
class CommonVoice(Format):
    name = "commonvoice"
    description = "Common Voice TSV split (path, sentence; clips/ beside it)"

    def detect(self, src: Path) -> bool:
        if src.is_dir():
            return (src / "clips").is_dir() and any(_is_cv_tsv(p) for p in src.glob("*.tsv"))
        return _is_cv_tsv(src)

    def _tsv(self, src: Path, split: str | None) -> Path:
        if src.is_file():
            return src
        splits = sorted(p.stem for p in src.glob("*.tsv") if _is_cv_tsv(p))
        if split is None:
            raise AsrtuneError(
                f"{src} is a Common Voice folder with several splits ({', '.join(splits)}): "
                "name one TSV as the source, or pass --split"
            )
        if split not in splits:
            raise AsrtuneError(f"{src}: no Common Voice split {split!r} (found: {', '.join(splits)})")
        return src / f"{split}.tsv"

    def read(self, src: Path, context: ReadContext) -> Iterator[SourceRow | Dropped]:
        tsv = self._tsv(src, context.split)
        folder = tsv.resolve().parent
        with tsv.open(encoding="utf-8", errors="replace", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader)
            for fields in reader:
                number = reader.line_num
                if not any(field.strip() for field in fields):
                    continue
                if len(fields) != len(header):
                    yield invalid(
                        tsv, number, f"{len(fields)} tab-separated fields, the header has {len(header)}"
                    )
                    continue
                row = dict(zip(header, fields))
                if not row["path"].strip():
                    yield invalid(tsv, number, "empty path")
                    continue
                audio = resolve_audio(row["path"].strip(), folder / "clips", folder)
                yield SourceRow(
                    id=Path(row["path"].strip()).stem,
                    audio=audio,
                    text=row["sentence"],
                    language=_language(row),
                    source=str(tsv),
                    line=number,
                )


@FORMATS.register("audiofolder")
class AudioFolder(Format):
    name = "audiofolder"
    description = (
        "Hugging Face audiofolder (metadata.csv or metadata.jsonl: file_name + transcription/text/sentence)"
    )

    def detect(self, src: Path) -> bool:
        if src.is_dir():
            return any((src / name).is_file() for name in _METADATA)
        return src.name in _METADATA

    def read(self, src: Path, context: ReadContext) -> Iterator[SourceRow | Dropped]:
        metadata = src if src.is_file() else next(src / name for name in _METADATA if (src / name).is_file())
        folder = metadata.resolve().parent
        rows = self._jsonl(metadata) if metadata.suffix == ".jsonl" else self._csv(metadata)
        text_column = None
        for number, row in rows:
            if isinstance(row, Dropped):
                yield row
                continue
            if text_column is None:
                text_column = first_text_column(list(row))
                if "file_name" not in row or text_column is None:
                    raise AsrtuneError(
                        f"{metadata}: needs a file_name column and one of {', '.join(TEXT_COLUMNS)} "
                        f"(found: {', '.join(row)})"
                    )
            name, text = row.get("file_name"), row.get(text_column)
            if not isinstance(name, str) or not name.strip():
                yield invalid(metadata, number, "empty file_name")
                continue
            if not isinstance(text, str):
                yield invalid(metadata, number, f"{text_column} is not text: {text!r}")
                continue
            audio = resolve_audio(name.strip(), folder)
            yield SourceRow(
                id=str(Path(name.strip()).with_suffix("")),
                audio=audio,
                text=text,
                language=_language(row),
                source=str(metadata),
                line=number,
            )

    @staticmethod
    def _csv(path: Path) -> Iterator[tuple[int, dict | Dropped]]:
        with path.open(encoding="utf-8", errors="replace", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                return
            for fields in reader:
                if not any(field.strip() for field in fields):
                    continue
                if len(fields) != len(header):
                    yield (
                        reader.line_num,
                        invalid(
                            path,
                            reader.line_num,
                            f"{len(fields)} comma-separated fields, the header has {len(header)}",
                        ),
                    )
                    continue
                yield reader.line_num, dict(zip(header, fields))

    @staticmethod
    def _jsonl(path: Path) -> Iterator[tuple[int, dict | Dropped]]:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    value = json.loads(raw)
                except json.JSONDecodeError as error:
                    yield number, invalid(path, number, f"not valid JSON ({error.msg})")
                    continue
                if not isinstance(value, dict):
                    yield number, invalid(path, number, "expected a JSON object")
                    continue
                yield number, value
