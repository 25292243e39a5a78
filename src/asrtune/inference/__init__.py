"""Inference for deployment: long-form transcription with timestamps, output formats, CTranslate2 checks."""

from __future__ import annotations

from asrtune.inference.formats import FORMATS, render
from asrtune.inference.longform import (
    Segment,
    TranscribeOptions,
    TranscribeStats,
    Transcript,
    prepare_for_inference,
    timestamp_issues,
    transcribe_files,
)

__all__ = ["FORMATS", "Segment", "TranscribeOptions", "TranscribeStats", "Transcript",
           "prepare_for_inference", "render", "timestamp_issues", "transcribe_files"]
