"""``asrtune prepare``: any supported corpus in, a clean asrtune manifest and a report out.

Every row read is accounted for: it is kept (whole, cut from its file, or split into pieces) or
listed under ``dropped`` with its registered reason, its line or id, and a detail. Sources are never
modified; audio that has to become new files (pieces cut from longer recordings, audio stored
inside a ``datasets`` arrow file) is written under ``<out stem>_audio/`` beside the manifest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from asrtune.data.charset import SCRIPTS, known_language
from asrtune.data.clean import Aligner, CleanContext, CleanSettings, check_row, rules_in_order
from asrtune.data.formats import ReadContext, Source, read_source
from asrtune.data.formats.base import safe_name
from asrtune.data.labels import load_label_budget
from asrtune.data.manifest import Utterance, write_manifest
from asrtune.data.rows import Dropped, SourceRow
from asrtune.data.segment import Piece
from asrtune.data.textnorm import normalize
from asrtune.errors import AsrtuneError

__all__ = ["PrepareSettings", "prepare", "summary_rows", "audio_dir_for"]

_EXAMPLES = 20


@dataclass(frozen=True, kw_only=True)
class PrepareSettings:
    """Everything ``asrtune prepare`` takes besides the source and the outputs.

    Attributes:
        format: a registered format name, or ``auto`` to detect it.
        split: the split to read from a multi-split source.
        model: model whose tokenizer bounds transcript length (and which the label check runs).
        clean: thresholds of the cleaning rules.
        normalize: text normalisation steps (``asrtune.data.textnorm``), applied before the rules.
        label_check: transcribe kept rows and flag those above ``max_cer`` (report only).
        max_cer: the label check's threshold.
        progress: show progress bars.
    """

    format: str = "auto"
    split: str | None = None
    model: str = "bundled:tiny.en"
    clean: CleanSettings = field(default_factory=CleanSettings)
    normalize: tuple[str, ...] = ()
    label_check: bool = False
    max_cer: float = 0.5
    progress: bool = True


def audio_dir_for(out: Path) -> Path:
    """Where new audio files for the manifest ``out`` go: ``<out stem>_audio/`` beside it."""
    return out.parent / f"{out.stem}_audio"


def _write_atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(staging, path)


def _write_piece(piece: Piece, folder: Path, used: set[str]) -> str:
    """Write a cut piece as FLAC (lossless, the file's own rate and channels); returns its path."""
    stem = safe_name(piece.id)
    while stem in used:
        stem += "_"
    used.add(stem)
    folder.mkdir(parents=True, exist_ok=True)
    # FLAC holds at most 8 channels; wider files are kept exact as float WAV.
    suffix, kwargs = (
        (".flac", {"subtype": "PCM_24"}) if piece.raw.shape[1] <= 8 else (".wav", {"subtype": "FLOAT"})
    )
    target = folder / f"{stem}{suffix}"
    handle, staging = tempfile.mkstemp(dir=folder, prefix=".piece-", suffix=suffix)
    os.close(handle)
    sf.write(staging, np.clip(piece.raw, -1.0, 1.0), piece.rate, **kwargs)
    os.replace(staging, target)
    return str(target.resolve())


def _normalise_rows(
    rows: tuple[SourceRow, ...], steps: tuple[str, ...]
) -> tuple[tuple[SourceRow, ...], dict]:
    section = {"steps": list(steps), "changed": 0, "examples": []}
    if not steps:
        return rows, section
    result = []
    for row in rows:
        text = normalize(row.text, steps)
        if text != row.text:
            section["changed"] += 1
            if len(section["examples"]) < _EXAMPLES:
                section["examples"].append({"id": row.id, "before": row.text, "after": text})
            row = dataclasses.replace(row, text=text)
        result.append(row)
    return tuple(result), section


def _check_languages(rows: tuple[SourceRow, ...], settings: CleanSettings) -> None:
    """The charset rule needs a known language for every row: say so before any work, not halfway."""
    if not settings.charset:
        return
    languages = {row.language or settings.language for row in rows}
    if None in languages:
        raise AsrtuneError(
            "--charset needs each row's language: the source gives none for some rows; pass --language"
        )
    unknown = sorted(lang for lang in languages if not known_language(lang))
    if unknown:
        raise AsrtuneError(
            f"--charset knows no script for language(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(SCRIPTS))})"
        )


def prepare(
    src: str | Path,
    out: str | Path,
    report_path: str | Path | None = None,
    settings: PrepareSettings = PrepareSettings(),
    *,
    check_labels: Callable[[list[Utterance]], dict] | None = None,
    aligner: Aligner | None = None,
) -> dict:
    """Read ``src``, clean it, write the kept rows to ``out`` and the report to ``report_path``.

    ``check_labels``: with ``settings.label_check``, the check run on the kept rows (its result is the report's
    ``label_check``; :func:`asrtune.evaluation.labelcheck.label_check` with the model loaded).
    ``aligner``: with ``settings.clean.align``, forced alignment of rows over ``max_seconds`` that have no
    timing (their words' times; ``asrtune prepare --align MODEL`` passes
    :func:`asrtune.inference.align.align_transcript` with the model loaded); the report gains ``alignment``.

    Returns:
        The report (also written as JSON). ``out`` is written only when a row is kept.

    Raises:
        AsrtuneError: the source cannot be read as a whole, or an output would overwrite the source.
    """
    if settings.label_check and check_labels is None:
        raise AsrtuneError("settings.label_check: pass the check to run (check_labels)")
    if settings.clean.align and aligner is None:
        raise AsrtuneError("settings.clean.align: pass the forced aligner to run (aligner)")
    src, out = Path(src).expanduser(), Path(out).expanduser()
    report_path = Path(report_path) if report_path else out.with_name(out.stem + ".report.json")
    for target in (out, report_path):
        if src.exists() and target.exists() and target.resolve() == src.resolve():
            raise AsrtuneError(f"{target} is the source: asrtune prepare never overwrites its input")
    audio_dir = audio_dir_for(out)
    source = read_source(
        src,
        ReadContext(audio_dir=audio_dir, split=settings.split, progress=settings.progress),
        settings.format,
    )
    rows, normalization = _normalise_rows(source.rows, settings.normalize)
    _check_languages(rows, settings.clean)
    context = CleanContext(settings=settings.clean, budget=load_label_budget(settings.model),
                           aligner=aligner if settings.clean.align else None)
    kept, dropped, segmentation, alignment = _clean(rows, context, audio_dir, settings.progress)
    dropped = list(source.dropped) + dropped
    report = _report(source, out, settings, kept, dropped, segmentation, normalization)
    if settings.clean.align:
        report["alignment"] = _alignment_summary(alignment, dropped)
    if settings.label_check and kept:
        report["label_check"] = check_labels(kept)
    if kept:
        write_manifest(kept, out)
    _write_atomic_text(report_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def _alignment_summary(aligned: dict, dropped: list[Dropped]) -> dict:
    """What forced alignment kept: rows aligned, words and seconds in and kept, pieces dropped, kept scores."""
    scores = sorted(aligned.pop("scores"))
    drops = [entry for entry in dropped if entry.reason == "alignment"]
    return {
        **{key: round(value, 3) if isinstance(value, float) else value for key, value in aligned.items()},
        "pieces_dropped": len(drops),
        "kept_score_min": round(scores[0], 4) if scores else None,
        "kept_score_median": round(float(np.median(scores)), 4) if scores else None,
    }


def _clean(
    rows: tuple[SourceRow, ...], context: CleanContext, audio_dir: Path, progress: bool
) -> tuple[list[Utterance], list[Dropped], dict, dict]:
    kept: list[Utterance] = []
    dropped: list[Dropped] = []
    segmentation = Counter()
    alignment = {"rows_aligned": 0, "words": 0, "words_kept": 0, "words_not_heard": 0, "seconds_aligned": 0.0,
                 "seconds_kept": 0.0, "scores": []}
    used: set[str] = set()
    for row in tqdm(rows, desc="prepare", unit="row", disable=not progress):
        outcome = check_row(row, context)
        if not (outcome.kept or outcome.dropped):  # the invariant every rule keeps: no row vanishes
            raise AsrtuneError(f"internal error: row {row.id} ({row.source}) was neither kept nor dropped")
        dropped.extend(outcome.dropped)
        if outcome.aligned:
            _count_alignment(alignment, outcome)
        if outcome.split:
            segmentation["split_rows"] += 1
        for piece, _mono in outcome.kept:
            audio = _write_piece(piece, audio_dir, used) if piece.cut else row.audio
            segmentation[
                "split_pieces" if outcome.split else "cut_pieces" if piece.cut else "whole_files"
            ] += 1
            kept.append(
                Utterance(
                    id=piece.id,
                    audio=audio,
                    text=piece.text,
                    language=row.language or context.settings.language,
                    duration=piece.seconds,
                    segments=piece.segments,
                )
            )
    return kept, dropped, dict(segmentation), alignment


def _count_alignment(counts: dict, outcome) -> None:
    words = outcome.aligned
    counts["rows_aligned"] += 1
    counts["words"] += len(words)
    counts["words_not_heard"] += sum(not w.heard for w in words)
    counts["seconds_aligned"] += outcome.aligned_seconds
    for piece, _mono in outcome.kept:
        counts["words_kept"] += len(piece.text.split())
        counts["seconds_kept"] += piece.seconds
        if piece.score is not None:
            counts["scores"].append(piece.score)


def _report(
    source: Source,
    out: Path,
    settings: PrepareSettings,
    kept: list[Utterance],
    dropped: list[Dropped],
    segmentation: dict,
    normalization: dict,
) -> dict:
    enabled = rules_in_order(settings=settings.clean)
    counts = {rule.name: 0 for rule in enabled}
    seconds = {rule.name: 0.0 for rule in enabled}
    for entry in dropped:
        counts[entry.reason] = counts.get(entry.reason, 0) + 1
        seconds[entry.reason] = seconds.get(entry.reason, 0.0) + entry.seconds
    kept_seconds = sum(u.duration or 0.0 for u in kept)
    return {
        "source": str(source.path),
        "format": source.format,
        "out": str(out),
        "model": settings.model,
        "rows_read": len(source.rows) + len(source.dropped),
        "kept": len(kept),
        "dropped_count": len(dropped),
        "reasons": counts,
        "seconds_dropped_by_reason": {name: round(value, 3) for name, value in seconds.items()},
        "hours_kept": round(kept_seconds / 3600, 6),
        "hours_dropped": round(sum(entry.seconds for entry in dropped) / 3600, 6),
        "dropped": [entry.to_dict() for entry in dropped],
        "segmentation": {
            "whole_files": 0,
            "cut_pieces": 0,
            "split_rows": 0,
            "split_pieces": 0,
            **segmentation,
            "too_long_dropped": counts.get("too_long", 0),
        },
        "normalization": normalization,
        "label_check": None,
        "settings": {
            **dataclasses.asdict(settings.clean),
            "format": settings.format,
            "split": settings.split,
            "normalize": list(settings.normalize),
            "label_check": settings.label_check,
            "max_cer": settings.max_cer,
        },
        "rules": {rule.name: rule.explanation for rule in enabled},
    }


def _clock(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def summary_rows(report: dict) -> list[list[str]]:
    """The rows of the table ``asrtune prepare`` prints: kept, then each reason, then the total."""
    rows = [["kept", str(report["kept"]), _clock(report["hours_kept"] * 3600), "written to the manifest"]]
    for name, count in report["reasons"].items():
        rows.append(
            [
                f"dropped: {name}",
                str(count),
                _clock(report["seconds_dropped_by_reason"].get(name, 0.0)),
                report["rules"].get(name, ""),
            ]
        )
    rows.append(
        [
            "total",
            str(report["kept"] + report["dropped_count"]),
            _clock((report["hours_kept"] + report["hours_dropped"]) * 3600),
            f"{report['rows_read']} rows read ({report['format']})",
        ]
    )
    return rows
