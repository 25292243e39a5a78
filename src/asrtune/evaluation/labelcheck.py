"""Label check: transcribe kept rows with the base model and flag those it disagrees with strongly.

A character error rate far above the rest usually means the transcript belongs to another clip,
is cut short, or is in another language. The check only reports (``label_check.flagged`` in the
prepare report); nothing is dropped, since a weak base model also disagrees with right labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import jiwer

from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import Utterance
from asrtune.evaluation.decode import transcribe_dataset
from asrtune.evaluation.normalize import normalizer_for
from asrtune.models.load import LoadedModel

__all__ = ["row_cer", "label_check"]


def row_cer(reference: str, hypothesis: str, language: str | None) -> float:
    """CER of one row after Whisper's normaliser (1.0 for any output against an empty reference)."""
    normalise = normalizer_for(language)
    ref, hyp = normalise(reference).strip(), normalise(hypothesis).strip()
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.cer(ref, hyp))


def label_check(
    utterances: Sequence[Utterance],
    loaded: LoadedModel,
    *,
    max_cer: float,
    language: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict:
    """Transcribe ``utterances`` greedily with ``loaded`` (the model ``prepare --model`` names); return the
    report section.

    Returns:
        ``{"model", "max_cer", "checked", "mean_cer", "flagged_count", "flagged": [{"id", "audio",
        "cer", "text", "hypothesis"}]}``, flagged rows sorted by CER, worst first.
    """
    dataset = FeatureDataset(
        list(utterances),
        loaded.processor,
        multilingual=loaded.multilingual,
        language=language,
        progress=progress,
        desc="label check features",
    )
    hypotheses = transcribe_dataset(
        loaded, dataset, language=language, batch_size=batch_size, progress=progress, desc="label check"
    )
    rows = []
    for utterance, hypothesis in zip(dataset.utterances, hypotheses):
        cer = row_cer(utterance.text, hypothesis, utterance.language or language)
        rows.append(
            {
                "id": utterance.id,
                "audio": utterance.audio,
                "cer": round(cer, 4),
                "text": utterance.text,
                "hypothesis": hypothesis,
            }
        )
    flagged = sorted((r for r in rows if r["cer"] > max_cer), key=lambda r: -r["cer"])
    return {
        "model": loaded.source,
        "max_cer": max_cer,
        "checked": len(rows),
        "mean_cer": round(sum(r["cer"] for r in rows) / len(rows), 4) if rows else None,
        "flagged_count": len(flagged),
        "flagged": flagged,
    }
