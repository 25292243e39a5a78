"""Transcript writers: plain text, JSON, SubRip (srt) and WebVTT (vtt), one registry entry each."""

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


@FORMATS.register("srt")
def _srt(transcript: Transcript) -> str:
    return "".join(f"{i}\n{timestamp(s.start)} --> {timestamp(s.end)}\n{s.text}\n\n"
                   for i, s in enumerate(transcript.segments, start=1))


@FORMATS.register("vtt")
def _vtt(transcript: Transcript) -> str:
    return "WEBVTT\n\n" + "".join(f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text}\n\n"
                                   for s in transcript.segments)


def render(transcript: Transcript, fmt: str) -> str:
    """The transcript in ``fmt`` (txt, json, srt, vtt)."""
    return FORMATS.get(fmt)(transcript)
