"""Each utterance's audio file, duration and manifest fields (voice, speaker, anything a row carries).

A set's audio comes from its manifest (the run config's, the saved evaluation's) or from ``--data``:
``MANIFEST`` is used for every set whose utterances (id and text) it all holds, ``SET=MANIFEST`` for
the sets of that name. Rows are matched by id; the manifest's own reader resolves ``audio``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from asrtune.data.manifest import read_manifest
from asrtune.errors import AsrtuneError
from asrtune.evaluation.hallucination import write_nonspeech_clips
from asrtune.explore.sources import SetSource

__all__ = ["Clip", "DataOverride", "clips_for", "manifest_clips", "parse_data"]

_NOT_FIELDS = {
    "audio",
    "text",
    "id",
    "duration",
    "audio_filepath",
    "offset",
}  # shown elsewhere, or not meaningful


@dataclass(frozen=True, kw_only=True)
class Clip:
    """One utterance's audio (absolute path, or None), duration in seconds (None: unknown) and fields."""

    audio: str | None
    duration: float | None
    text: str | None = None
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class DataOverride:
    """``--data [SET=]MANIFEST``: where a set's audio and fields come from instead of its own manifest."""

    manifest: Path
    set_name: str | None = None


def parse_data(value: str) -> DataOverride:
    """``SET=MANIFEST`` or ``MANIFEST``.

    Raises:
        AsrtuneError: the manifest does not exist.
    """
    name, sep, rest = value.partition("=")
    if sep and name and "/" not in name and not Path(value).exists():
        override = DataOverride(manifest=Path(rest).expanduser(), set_name=name)
    else:
        override = DataOverride(manifest=Path(value).expanduser())
    if not override.manifest.is_file():
        raise AsrtuneError(f"--data: manifest not found: {override.manifest}")
    return override


def _duration(path: str, given: float | None) -> float | None:
    if given is not None:
        return given
    try:
        return float(sf.info(path).duration)
    except (RuntimeError, OSError, sf.LibsndfileError):
        return None


def _scalar(value: object) -> str | None:
    if isinstance(value, bool) or value is None:
        return None if value is None else str(value).lower()
    return str(value) if isinstance(value, (str, int, float)) else None


def manifest_clips(path: Path) -> dict[str, Clip]:
    """Every row of a manifest by id: audio (absolute; None when the file is missing), duration, fields."""
    utterances = read_manifest(path)
    raws = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    clips = {}
    for utterance, raw in zip(utterances, raws, strict=True):
        found = Path(utterance.audio).is_file()
        fields = {k: s for k, v in raw.items() if k not in _NOT_FIELDS and (s := _scalar(v)) is not None}
        clips[utterance.id] = Clip(
            audio=utterance.audio if found else None,
            duration=_duration(utterance.audio, utterance.duration) if found else None,
            text=utterance.text,
            fields=fields,
        )
    return clips


def _nonspeech(folder: Path) -> dict[str, Clip]:
    rows = write_nonspeech_clips(folder, write=False)
    return {
        u.id: Clip(
            audio=u.audio if Path(u.audio).is_file() else None,
            duration=u.duration,
            fields={"kind": u.id.removeprefix("nonspeech-").rsplit("-", 1)[0]},
        )
        for u in rows
    }


def _covers(clips: dict[str, Clip], source: SetSource) -> bool:
    pairs = zip(source.ids, source.references, strict=True)
    return all(utt_id in clips and clips[utt_id].text == text for utt_id, text in pairs)


def clips_for(
    sources: list[SetSource], overrides: list[DataOverride], warnings: list[str]
) -> list[dict[str, Clip]]:
    """Each set's clips by id (an utterance without a row or a file has none), ``--data`` first.

    Raises:
        AsrtuneError: a ``--data`` manifest that no set uses, or a ``SET=`` that names no set.
    """
    read = {o.manifest: manifest_clips(o.manifest) for o in overrides}
    used = set()
    out = []
    for source in sources:
        clips: dict[str, Clip] = {}
        for override in overrides:
            named = override.set_name == source.name
            if named or (override.set_name is None and _covers(read[override.manifest], source)):
                clips = read[override.manifest]
                used.add(override)
                break
        else:
            if source.manifest is not None:
                clips = manifest_clips(source.manifest)
            elif source.nonspeech_dir is not None:
                clips = _nonspeech(source.nonspeech_dir)
        missing = [i for i in source.ids if clips.get(i) is None or clips[i].audio is None]
        if missing and (clips or source.manifest is not None):
            warnings.append(
                f"{source.key}: no audio for {len(missing)} of {len(source.ids)} utterances "
                f"(first: {missing[0]})"
            )
        out.append(clips)
    unused = [o for o in overrides if o not in used]
    if unused:
        o = unused[0]
        raise AsrtuneError(
            f"--data {o.set_name + '=' if o.set_name else ''}{o.manifest}: "
            + (
                f"no set is named {o.set_name}"
                if o.set_name
                else "no set's utterances (ids and texts) are all in it; name the set: --data SET=MANIFEST"
            )
        )
    return out
