"""Forgetting (the WER change on general sets) and the checkpoint choice under a forgetting budget.

Seed 000 warns that fine-tuning on a narrow domain makes a model forget general speech; seed 002
measures it as catastrophic forgetting. With general sets, the recipe keeps the checkpoint with the
lowest target WER among those whose general WER rose by at most the budget above the base model's on
the same utterances: absolute WER points (``loop.forgetting_measure: absolute``, default budget 0.03)
or a share of the base model's WER on that set (``relative``: 0.10 = at most 10% worse), which
holds general sets of very different difficulty (real speech at 4% WER, a hard voice at 25%) to the
same standard. Until some checkpoint is within budget, the
one that forgot least is kept, so a run always has a best checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from asrtune.evaluation.metrics import score

__all__ = ["Transcripts", "wer_rise", "forgetting_of", "within_budget", "checkpoint_rank", "is_better", "MEASURES"]

MEASURES = ("absolute", "relative")

_TOLERANCE = 1e-12  # a rise of exactly the budget is within it, whatever the float rounding


@dataclass(frozen=True)
class Transcripts:
    """Hypotheses of one model on one set, with the references and the scoring language.

    Attributes:
        ids, references, hypotheses: (N,) tuples, row-aligned (lists are accepted and frozen).
        language: the language the set is scored in (None: English; "multi": mixed).
        decoding: the decoding settings that produced the hypotheses (a canonical JSON string, see
            :func:`asrtune.training.evidence.decoding_key`); None when unknown. Not part of equality.
    """

    ids: tuple[str, ...]
    references: tuple[str, ...]
    hypotheses: tuple[str, ...]
    language: str | None = None
    decoding: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("ids", "references", "hypotheses"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not len(self.ids) == len(self.references) == len(self.hypotheses):
            raise ValueError("ids, references and hypotheses differ in length")

    def subset(self, ids: list[str] | tuple[str, ...]) -> Transcripts:
        """The rows with these ids, in that order.

        Raises:
            KeyError: an id is not in this set.
        """
        where = {utt_id: i for i, utt_id in enumerate(self.ids)}
        rows = [where[utt_id] for utt_id in ids]
        return Transcripts(
            [self.ids[i] for i in rows],
            [self.references[i] for i in rows],
            [self.hypotheses[i] for i in rows],
            self.language,
            self.decoding,
        )

    def wer(self) -> float:
        return score(list(self.references), list(self.hypotheses), self.language).wer

    def as_dict(self) -> dict:
        return {
            "ids": list(self.ids),
            "references": list(self.references),
            "hypotheses": list(self.hypotheses),
            "language": self.language,
            "decoding": self.decoding,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Transcripts:
        return cls(
            list(data["ids"]),
            list(data["references"]),
            list(data["hypotheses"]),
            data.get("language"),
            data.get("decoding"),
        )


def wer_rise(tuned: Transcripts, base: Transcripts, measure: str = "absolute") -> float:
    """WER(tuned) - WER(base), the base scored on the tuned transcripts' utterances only.

    ``measure="relative"`` divides by WER(base); a base that made no error has no share to lose: any
    rise there is infinite.
    """
    before = base.subset(tuned.ids).wer()
    rise = tuned.wer() - before
    if measure == "absolute":
        return rise
    if measure != "relative":
        raise ValueError(f"forgetting measure {measure!r}: not one of {MEASURES}")
    if before > 0:
        return rise / before
    return 0.0 if rise <= 0 else float("inf")


def forgetting_of(tuned: Mapping[str, Transcripts], base: Mapping[str, Transcripts],
                  measure: str = "absolute") -> dict[str, float]:
    """The WER rise on each general set, by name (see :func:`wer_rise`)."""
    return {name: wer_rise(transcripts, base[name], measure) for name, transcripts in tuned.items()}


def within_budget(forgetting: float | None, budget: float) -> bool:
    """No general sets (None) is always within budget."""
    return forgetting is None or forgetting <= budget + _TOLERANCE


def checkpoint_rank(wer: float, forgetting: float | None, budget: float) -> tuple[float, ...]:
    """A sort key: lower is better.

    Args:
        wer: target WER of the checkpoint.
        forgetting: its largest WER rise over the general sets (None: there are none).
        budget: the largest rise allowed.

    Within budget, checkpoints compare by target WER; any within budget beats every one outside it;
    outside it, the one that forgot least is best (then target WER).
    """
    if within_budget(forgetting, budget):
        return (0.0, wer)
    return (1.0, float(forgetting), wer)


def is_better(rank: tuple[float, ...], best: tuple[float, ...] | None) -> bool:
    """Whether a checkpoint of this rank replaces the kept one (``best`` None: nothing kept yet)."""
    return best is None or rank < best
