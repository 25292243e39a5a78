"""Kaldi data directories: ``wav.scp`` + ``text``, optional ``segments`` and ``utt2lang``.

* ``wav.scp``: ``<recording-id> <path>``. Piped commands (``sox ... |``) are not run: those rows are
  dropped with the reason ``invalid_line`` and the line that names the pipe.
* ``text``: ``<utterance-id> <transcript>``; every utterance comes from here.
* ``segments``: ``<utterance-id> <recording-id> <start> <end>`` (seconds; ``end`` -1 means the end of
  the recording). Without it, utterance ids are recording ids.

Relative audio paths are resolved against the data directory, then its parent and grandparent
(Kaldi recipes write them relative to the recipe folder, usually two levels up).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from asrtune.data.formats.base import FORMATS, Format, ReadContext, invalid, resolve_audio
from asrtune.data.rows import Dropped, SourceRow
from asrtune.errors import AsrtuneError

__all__ = ["KaldiDir"]


@dataclass(frozen=True)
class _Entry:
    line: int
    value: object  # a path (str), a segment (recording, start, end), or a problem (str) with ok=False
    ok: bool = True


def _table(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, key, rest) for every non-blank line of a Kaldi table; rest may be empty."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            key, _, rest = line.partition(" ")
            yield number, key, rest.strip()


def _recordings(wav_scp: Path, bases: tuple[Path, ...]) -> dict[str, _Entry]:
    recordings: dict[str, _Entry] = {}
    for number, key, rest in _table(wav_scp):
        if key in recordings:
            recordings[key] = _Entry(
                number, f"{wav_scp.name}:{number}: recording {key} is listed twice", ok=False
            )
        elif not rest:
            recordings[key] = _Entry(
                number, f"{wav_scp.name}:{number}: recording {key} names no audio", ok=False
            )
        elif rest.endswith("|"):
            recordings[key] = _Entry(
                number,
                f"{wav_scp.name}:{number}: recording {key} is a command pipe "
                f"({rest[:60]}); asrtune does not run commands: write the audio "
                "to files first",
                ok=False,
            )
        else:
            recordings[key] = _Entry(number, resolve_audio(rest, *bases))
    return recordings


def _segments(path: Path) -> dict[str, _Entry]:
    segments: dict[str, _Entry] = {}
    for number, key, rest in _table(path):
        fields = rest.split()
        problem = None
        if len(fields) != 3:
            problem = f"expected '<utt> <recording> <start> <end>', got {len(fields) + 1} fields"
        else:
            try:
                start, end = float(fields[1]), float(fields[2])
            except ValueError:
                problem = f"start/end are not numbers: {fields[1]!r} {fields[2]!r}"
            else:
                if start < 0 or (end != -1 and end <= start):
                    problem = f"bad times: start {start}, end {end}"
        if key in segments:
            problem = f"utterance {key} is segmented twice"
        if problem:
            segments[key] = _Entry(number, f"{path.name}:{number}: {problem}", ok=False)
        else:
            segments[key] = _Entry(number, (fields[0], start, None if end == -1 else end))
    return segments


def _utt2lang(path: Path) -> dict[str, str]:
    return {key: rest for _, key, rest in _table(path)} if path.is_file() else {}


@FORMATS.register("kaldi")
class KaldiDir(Format):
    name = "kaldi"
    description = "Kaldi data directory (wav.scp, text, optional segments and utt2lang)"

    def detect(self, src: Path) -> bool:
        return src.is_dir() and (src / "wav.scp").is_file() and (src / "text").is_file()

    def read(self, src: Path, context: ReadContext) -> Iterator[SourceRow | Dropped]:
        if not self.detect(src):
            raise AsrtuneError(f"{src}: a Kaldi data directory needs wav.scp and text")
        folder = src.resolve()
        recordings = _recordings(folder / "wav.scp", (folder, folder.parent, folder.parent.parent))
        has_segments = (folder / "segments").is_file()
        segments = _segments(folder / "segments") if has_segments else {}
        languages = _utt2lang(folder / "utt2lang")
        text_file = folder / "text"
        seen: set[str] = set()
        for number, utt, transcript in _table(text_file):
            if utt in seen:
                yield invalid(text_file, number, f"utterance {utt} has a second transcript line", id=utt)
                continue
            seen.add(utt)
            start = end = None
            recording = utt
            if has_segments:
                segment = segments.get(utt)
                if segment is None:
                    yield invalid(text_file, number, f"utterance {utt} has no line in segments", id=utt)
                    continue
                if not segment.ok:
                    yield invalid(text_file, number, str(segment.value), id=utt)
                    continue
                recording, start, end = segment.value
            entry = recordings.get(recording)
            if entry is None:
                yield invalid(text_file, number, f"recording {recording} is not in wav.scp", id=utt)
                continue
            if not entry.ok:
                yield invalid(text_file, number, str(entry.value), id=utt)
                continue
            yield SourceRow(
                id=utt,
                audio=str(entry.value),
                text=transcript,
                language=languages.get(utt),
                start=start,
                end=end,
                source=str(text_file),
                line=number,
            )
        # Utterances named elsewhere but without a transcript are dropped too, never skipped silently.
        if has_segments:
            for utt, segment in segments.items():
                if utt not in seen:
                    yield invalid(
                        folder / "segments",
                        segment.line,
                        f"utterance {utt} has no transcript in text",
                        id=utt,
                    )
        else:
            for recording, entry in recordings.items():
                if recording not in seen:
                    yield invalid(
                        folder / "wav.scp",
                        entry.line,
                        f"recording {recording} has no transcript in text",
                        id=recording,
                        audio=str(entry.value) if entry.ok else None,
                    )
