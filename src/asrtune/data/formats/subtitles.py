"""Recordings with subtitles: a folder of audio files, each with a ``.srt`` or ``.vtt`` file of the same name.

``talk.wav`` + ``talk.srt`` (or ``talk.vtt``) is one recording; its cues, read with pysubs2 (formatting tags
stripped, comments and empty cues left out), are its timed spans. ``prepare`` cuts the recording into pieces
of whole cues up to 30 s, and each cue becomes a segment of its piece (what timestamp training learns from).
A subtitle file without audio, audio without a subtitle file, or a subtitle file pysubs2 cannot read is
dropped with the reason ``invalid_line``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from asrtune.data.formats.base import FORMATS, Format, ReadContext, invalid
from asrtune.data.rows import Dropped, SourceRow, Span
from asrtune.errors import AsrtuneError

__all__ = ["SubtitleFolder", "SUBTITLE_SUFFIXES", "AUDIO_SUFFIXES", "read_cues"]

SUBTITLE_SUFFIXES = (".srt", ".vtt")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64")


def _subtitles(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUBTITLE_SUFFIXES)


def _audio_files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES}


def read_cues(path: Path) -> tuple[Span, ...]:
    """A subtitle file's cues in time order, text as plain text on one line.

    Raises:
        ValueError: pysubs2 cannot read the file.
    """
    import pysubs2

    try:
        subtitles = pysubs2.load(str(path), encoding="utf-8", format_=path.suffix.lower().lstrip("."))
    except (pysubs2.exceptions.Pysubs2Error, UnicodeDecodeError, OSError) as error:
        raise ValueError(f"cannot read {path.name} as subtitles: {error}") from error
    cues = []
    for event in subtitles:
        text = " ".join(event.plaintext.split())
        if event.is_comment or not text or event.end <= event.start:
            continue
        cues.append(Span(text=text, start=event.start / 1000, end=event.end / 1000))
    return tuple(sorted(cues, key=lambda cue: (cue.start, cue.end)))


@FORMATS.register("subtitles")
class SubtitleFolder(Format):
    name = "subtitles"
    description = "folder of audio files with .srt or .vtt subtitles of the same name (cue times as segments)"

    def detect(self, src: Path) -> bool:
        if not src.is_dir() or (src / "wav.scp").exists() or (src / "metadata.csv").exists():
            return False
        audio = _audio_files(src)
        return any(subtitle.stem in audio for subtitle in _subtitles(src))

    def read(self, src: Path, context: ReadContext) -> Iterator[SourceRow | Dropped]:
        if not src.is_dir():
            raise AsrtuneError(f"{src}: subtitles are read from a folder of audio + .srt/.vtt files")
        audio = _audio_files(src)
        subtitles = _subtitles(src)
        paired = set()
        for subtitle in subtitles:
            recording = audio.get(subtitle.stem)
            if recording is None:
                yield invalid(subtitle, None, f"{subtitle.name} has no audio file of the same name "
                              f"({', '.join(AUDIO_SUFFIXES[:4])}, ...)", id=subtitle.stem)
                continue
            if subtitle.stem in paired:
                yield invalid(subtitle, None, f"{recording.name} has a second subtitle file ({subtitle.name})",
                              id=subtitle.stem, audio=str(recording))
                continue
            paired.add(subtitle.stem)
            try:
                cues = read_cues(subtitle)
            except ValueError as error:
                yield invalid(subtitle, None, str(error), id=subtitle.stem, audio=str(recording))
                continue
            if not cues:
                yield invalid(subtitle, None, f"{subtitle.name} has no cue with text", id=subtitle.stem,
                              audio=str(recording))
                continue
            yield SourceRow(id=subtitle.stem, audio=str(recording.resolve()), text=" ".join(c.text for c in cues),
                            spans=cues, source=str(subtitle))
        for stem, recording in audio.items():
            if stem not in paired and not any(s.stem == stem for s in subtitles):
                yield invalid(recording, None, f"{recording.name} has no .srt or .vtt file of the same name",
                              id=stem, audio=str(recording))
