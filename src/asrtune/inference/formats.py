"""Transcript writers: plain text, JSON, SubRip (srt) and WebVTT (vtt), one registry entry each.

With word timestamps, JSON lists each segment's words; SRT has a cue per word showing its segment's text with
that word underlined (openai/whisper's ``--highlight_words``); WebVTT keeps a cue per segment with a cue
timestamp before each word after the first (WebVTT's karaoke-style inline timing).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from asrtune.inference.longform import Transcript
from asrtune.registry import Registry

__all__ = ["FORMATS", "render", "timestamp"]

FORMATS: Registry[Callable[[Transcript], str]] = Registry("output format")


def timestamp(seconds: float, separator: str = ",") -> str:
    """``HH:MM:SS,mmm`` (srt) or, with ``separator="."``, ``HH:MM:SS.mmm`` (vtt)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


@FORMATS.register("txt")
def _txt(transcript: Transcript) -> str:
    """One segment per line, as openai/whisper writes .txt."""
    return "".join(segment.text + "\n" for segment in transcript.segments)


@FORMATS.register("json")
def _json(transcript: Transcript) -> str:
    return json.dumps(transcript.as_dict(), ensure_ascii=False, indent=2) + "\n"


def _cues(transcript: Transcript) -> list[tuple[float, float, str]]:
    """SRT cues: one per segment, or with words one per word, its segment's text with the word underlined."""
    cues = []
    for segment in transcript.segments:
        if not segment.words:
            cues.append((segment.start, segment.end, segment.text))
            continue
        texts = [w.text for w in segment.words]
        for k, word in enumerate(segment.words):
            shown = " ".join(f"<u>{t}</u>" if j == k else t for j, t in enumerate(texts))
            cues.append((word.start, max(word.end, word.start + 0.001), shown))
    return cues


@FORMATS.register("srt")
def _srt(transcript: Transcript) -> str:
    return "".join(f"{i}\n{timestamp(start)} --> {timestamp(end)}\n{text}\n\n"
                   for i, (start, end, text) in enumerate(_cues(transcript), start=1))


def _vtt_text(segment) -> str:
    if not segment.words:
        return segment.text
    parts = [segment.words[0].text]
    for word in segment.words[1:]:
        parts.append(f"<{timestamp(word.start, '.')}>{word.text}")
    return " ".join(parts)


@FORMATS.register("vtt")
def _vtt(transcript: Transcript) -> str:
    return "WEBVTT\n\n" + "".join(f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{_vtt_text(s)}\n\n"
                                   for s in transcript.segments)


def render(transcript: Transcript, fmt: str) -> str:
    """The transcript in ``fmt`` (txt, json, srt, vtt)."""
    return FORMATS.get(fmt)(transcript)
