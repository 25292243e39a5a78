"""Two runs on the same test utterances, compared utterance by utterance (a paired bootstrap).

A sweep's transfer (``first:``) and joint (``joint:``) datasets score on their target's test set, so
each of their runs can be set beside the direct run of the same strategy and seed on the target. Two
95% intervals of 20 sentences each overlap even where one run is better on nearly every sentence;
the paired interval of the difference resamples the sentences once for both runs, so it says
whether the difference holds on this set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from asrtune.errors import AsrtuneError
from asrtune.evaluation.bootstrap import paired_bootstrap_delta, utterance_counts

__all__ = ["PairedComparison", "compare_runs", "comparison_table"]


@dataclass(frozen=True, kw_only=True)
class PairedComparison:
    """A run (``dataset``, e.g. ``af-via-nl``) against the direct run on its target (``af``).

    ``delta`` is ``wer - direct_wer`` (negative: fewer errors than direct) and ``delta_ci`` its
    paired-bootstrap 95% interval; both WERs are corpus WER on the same ``n`` utterances.
    """

    target: str
    dataset: str
    how: str  # "via nl" (transfer) or "joint with nl" (joint)
    label: str
    seed: int
    set_name: str
    n: int
    direct_wer: float
    wer: float
    delta: float
    delta_ci: tuple[float, float]
    wins: int  # utterances with fewer errors than direct
    losses: int  # utterances with more


def _main_set(run_dir: Path) -> tuple[str, list[dict]]:
    results = json.loads((run_dir / "results.json").read_text())
    name = results["evaluation"]["main_set"]
    path = run_dir / "evaluation" / f"{name}.jsonl"
    if not path.is_file():
        raise AsrtuneError(f"{run_dir}: no {path.name}, so its utterances cannot be paired")
    return name, [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def compare_runs(direct_dir: Path, run_dir: Path, *, target: str, dataset: str, how: str, label: str,
                 seed: int, language: str | None, resamples: int = 1000) -> PairedComparison:
    """Pair ``run_dir``'s main-set hypotheses with ``direct_dir``'s, utterance by utterance.

    Raises:
        AsrtuneError: the two runs were not scored on the same set and utterances.
    """
    direct_set, direct_rows = _main_set(direct_dir)
    other_set, other_rows = _main_set(run_dir)
    if direct_set != other_set or [r["id"] for r in direct_rows] != [r["id"] for r in other_rows]:
        raise AsrtuneError(f"{run_dir} and {direct_dir} were not scored on the same utterances "
                           f"({other_set}, {len(other_rows)} rows against {direct_set}, {len(direct_rows)})")
    references = [r["reference"] for r in direct_rows]
    before = utterance_counts(references, [r["hypothesis"] for r in direct_rows], language)
    after = utterance_counts(references, [r["hypothesis"] for r in other_rows], language)
    low, high = paired_bootstrap_delta(before, after, resamples=resamples)
    return PairedComparison(
        target=target, dataset=dataset, how=how, label=label, seed=seed, set_name=direct_set, n=len(before),
        direct_wer=before.wer, wer=after.wer, delta=after.wer - before.wer, delta_ci=(low, high),
        wins=int((after.errors < before.errors).sum()), losses=int((after.errors > before.errors).sum()),
    )


def comparison_table(comparisons: list[PairedComparison]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: target, strategy, seed, how, direct WER %, its WER %, Δ points [paired 95% CI]."""
    header = ["target", "strategy", "seed", "run", "direct WER %", "WER %", "Δ pts [95% CI, paired]",
              "better / worse utts"]
    rows = [[c.target, c.label, str(c.seed), c.how, f"{100 * c.direct_wer:.1f}", f"{100 * c.wer:.1f}",
             f"{100 * c.delta:+.1f} [{100 * c.delta_ci[0]:+.1f}, {100 * c.delta_ci[1]:+.1f}]",
             f"{c.wins} / {c.losses} of {c.n}"] for c in comparisons]
    return header, rows
