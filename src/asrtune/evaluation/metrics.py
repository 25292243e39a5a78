"""WER and CER with jiwer, raw and after Whisper's normaliser."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import jiwer

from asrtune.evaluation.normalize import normalizer_for

__all__ = ["Scores", "score"]


@dataclass(frozen=True, kw_only=True)
class Scores:
    """Corpus-level error rates. ``wer``/``cer`` are normalised; ``raw_*`` are on the text as written."""

    wer: float
    cer: float
    raw_wer: float
    substitutions: int
    deletions: int
    insertions: int
    reference_words: int
    n: int
    skipped_empty: int

    def as_dict(self) -> dict:
        return asdict(self)


def _wer_counts(references: list[str], hypotheses: list[str]) -> jiwer.WordOutput:
    return jiwer.process_words(references, hypotheses)


def score(references: list[str], hypotheses: list[str], language: str | None = None) -> Scores:
    """Score hypotheses against references.

    Rows whose reference is empty after normalisation (e.g. only punctuation) cannot have a WER;
    they are counted in ``skipped_empty`` and left out.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    normalise = normalizer_for(language)
    pairs = [(normalise(r).strip(), normalise(h).strip(), r.strip(), h.strip())
             for r, h in zip(references, hypotheses)]
    kept = [p for p in pairs if p[0]]
    if not kept:
        raise ValueError("no reference has any words after normalisation")
    refs, hyps, raw_refs, raw_hyps = (list(column) for column in zip(*kept))
    words = _wer_counts(refs, hyps)
    raw = jiwer.wer([r or " " for r in raw_refs], raw_hyps)
    reference_words = words.hits + words.substitutions + words.deletions
    return Scores(
        wer=float(words.wer),
        cer=float(jiwer.cer(refs, hyps)),
        raw_wer=float(raw),
        substitutions=int(words.substitutions),
        deletions=int(words.deletions),
        insertions=int(words.insertions),
        reference_words=int(reference_words),
        n=len(kept),
        skipped_empty=len(pairs) - len(kept),
    )
