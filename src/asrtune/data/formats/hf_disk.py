"""Hugging Face ``datasets`` saved with ``save_to_disk`` (a Dataset, or a DatasetDict with ``--split``).

Audio is read undecoded (``Audio(decode=False)``), so torchcodec is never needed: audio stored
inside the arrow files is written, byte for byte, into the prepared manifest's audio folder (the
dataset itself is not touched); audio stored as paths is used where it lies.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from asrtune.data.formats.base import (
    FORMATS,
    TEXT_COLUMNS,
    Format,
    ReadContext,
    first_text_column,
    invalid,
    resolve_audio,
    safe_name,
)
from asrtune.data.rows import Dropped, SourceRow
from asrtune.errors import AsrtuneError

__all__ = ["HfDisk"]

_INSTALL = "pip install 'asrtune[datasets]'"


def _load(src: Path, split: str | None):
    try:
        import datasets
    except ImportError as error:
        raise AsrtuneError(
            f"reading a Hugging Face dataset needs the `datasets` package: {_INSTALL}"
        ) from error
    try:
        loaded = datasets.load_from_disk(str(src))
    except (FileNotFoundError, ValueError, OSError) as error:
        raise AsrtuneError(f"{src}: cannot load the dataset ({error})") from error
    if isinstance(loaded, datasets.DatasetDict):
        splits = sorted(loaded)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split is None:
            raise AsrtuneError(f"{src} holds several splits ({', '.join(splits)}): choose one with --split")
        if split not in loaded:
            raise AsrtuneError(f"{src}: no split {split!r} (found: {', '.join(splits)})")
        return loaded[split], split
    return loaded, split


def _audio_column(dataset) -> tuple[str, bool]:
    """(column, is an ``Audio`` feature): the first Audio column, else a string column named audio/path."""
    from datasets import Audio

    for name, feature in dataset.features.items():
        if isinstance(feature, Audio):
            return name, True
    for name in ("audio", "audio_filepath", "path", "file_name"):
        if name in dataset.features and getattr(dataset.features[name], "dtype", None) == "string":
            return name, False
    raise AsrtuneError(
        f"dataset has no audio column (an Audio feature, or a string column audio/path); "
        f"columns: {', '.join(dataset.features)}"
    )


def _write_bytes(data: bytes, folder: Path, stem: str, suffix: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{stem}{suffix}"
    handle, staging = tempfile.mkstemp(dir=folder, prefix=".extract-")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    os.replace(staging, target)
    return str(target.resolve())


@FORMATS.register("hf_disk")
class HfDisk(Format):
    name = "hf_disk"
    description = "Hugging Face dataset saved with save_to_disk (audio column + transcription/text/sentence)"

    def detect(self, src: Path) -> bool:
        return src.is_dir() and (
            (src / "dataset_dict.json").is_file()
            or ((src / "state.json").is_file() and (src / "dataset_info.json").is_file())
        )

    def read(self, src: Path, context: ReadContext) -> Iterator[SourceRow | Dropped]:
        dataset, split = _load(src, context.split)
        column, is_audio = _audio_column(dataset)
        text_column = first_text_column(list(dataset.features))
        if text_column is None:
            raise AsrtuneError(
                f"{src}: no transcript column (one of {', '.join(TEXT_COLUMNS)}); "
                f"columns: {', '.join(dataset.features)}"
            )
        if is_audio:
            from datasets import Audio

            dataset = dataset.cast_column(column, Audio(decode=False))
        folder = src.resolve()
        prefix = split or "data"
        used: set[str] = set()
        for index, row in enumerate(
            tqdm(dataset, desc="read dataset", unit="row", disable=not context.progress)
        ):
            utt_id = str(row["id"]) if row.get("id") not in (None, "") else f"{prefix}-{index:06d}"
            text = row.get(text_column)
            value = row.get(column)
            audio = None
            if isinstance(value, dict) and value.get("bytes"):
                stem = safe_name(utt_id)
                while stem in used:
                    stem += "_"
                used.add(stem)
                suffix = Path(value.get("path") or "").suffix or ".wav"
                audio = _write_bytes(value["bytes"], context.audio_dir, stem, suffix)
            elif isinstance(value, dict) and value.get("path"):
                audio = resolve_audio(value["path"], folder)
            elif isinstance(value, str) and value:
                audio = resolve_audio(value, folder)
            if audio is None:
                yield invalid(src, None, f"row {index} has no audio (neither bytes nor a path)", id=utt_id)
                continue
            if not isinstance(text, str):
                yield invalid(
                    src, None, f"row {index}: {text_column} is not text: {text!r}", id=utt_id, audio=audio
                )
                continue
            language = next(
                (row[k] for k in ("language", "locale", "lang") if isinstance(row.get(k), str) and row[k]),
                None,
            )
            yield SourceRow(id=utt_id, audio=audio, text=text, language=language, source=str(src))
