"""Which checkpoint is kept: the lowest target WER, under the forgetting budget, and when to stop.

Every evaluation is offered to :class:`CheckpointSelector`; it keeps the best one (see
:func:`asrtune.evaluation.forgetting.checkpoint_rank`) and counts evaluations without improvement
for ``loop.patience``. :class:`Selection` makes all of an evaluation's decisions (keep, stop, LR plateau,
overfitting warning) on the main process. Their state goes into the checkpoint, so a resumed run decides
as the uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from asrtune.evaluation.decode import Evaluation
from asrtune.evaluation.forgetting import (
    Transcripts,
    checkpoint_rank,
    forgetting_of,
    is_better,
    within_budget,
)
from asrtune.evaluation.hallucination import hallucination_stats
from asrtune.training.lr_control import OverfitWatch, WerPlateau

__all__ = ["CheckpointSelector", "Counters", "Decision", "Selection"]


@dataclass
class CheckpointSelector:
    """The kept checkpoint's step, WER and forgetting, and the evaluations since it improved."""

    budget: float
    patience: int | None = None
    best_wer: float = math.inf
    best_step: int = -1
    best_forgetting: float | None = None
    best_interpolation: float | None = None  # the kept weights mix step 0 and best_step (loop.interpolation)
    evals_without_improvement: int = 0

    def observe(self, step: int, wer: float, forgetting: float | None, interpolation: float | None = None) -> bool:
        """Offer an evaluation; True when it becomes the kept checkpoint."""
        kept = checkpoint_rank(self.best_wer, self.best_forgetting, self.budget) if self.best_step >= 0 else None
        if is_better(checkpoint_rank(wer, forgetting, self.budget), kept):
            self.best_wer, self.best_step, self.best_forgetting = wer, step, forgetting
            self.best_interpolation = interpolation
            self.evals_without_improvement = 0
            return True
        self.evals_without_improvement += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.evals_without_improvement >= self.patience

    def state_dict(self) -> dict:
        state = asdict(self)
        del state["budget"], state["patience"]  # settings come from the config, which a resume may change
        return state

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class Counters:
    """The run's plain counters, saved with every checkpoint."""

    step: int = 0
    baseline: dict | None = None
    loss_since_eval: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    samples: int = 0
    train_seconds: float = 0.0


@dataclass(frozen=True)
class Decision:
    """What one evaluation decided, and what the run folder and the terminal are told of it.

    Attributes:
        improved: the evaluated weights become the kept checkpoint.
        stop: ``loop.patience`` evaluations without improvement.
        rises: the general sets' WER rise (forgetting), by name.
        records: ``metrics.jsonl`` records, in order (an LR change, then the evaluation).
        messages: lines to print, in order.
    """

    improved: bool
    stop: bool
    rises: dict
    records: list[dict]
    messages: list[str]


class Selection:
    """The main process's decisions after each evaluation: which checkpoint is kept (the lowest target WER under
    the forgetting budget, weight mixes included), when to stop, when to lower the LR (WER plateau) and when to
    warn of overfitting. Its state travels with every checkpoint and, after each decision, to the other
    processes.

    Args:
        loop: the run's loop settings (budget, its measure, patience, plateau).
        learning_rate: the peak LR (the plateau's floor is ``loop.min_learning_rate`` relative to it).
        language: the language the general sets are scored in (hallucination counts).
    """

    def __init__(self, loop, learning_rate: float, language: str | None) -> None:
        self.loop, self.language = loop, language
        self.selector = CheckpointSelector(budget=loop.forgetting_budget, patience=loop.patience)
        self.plateau = WerPlateau(loop.plateau_factor, loop.plateau_patience,
                                  floor=loop.min_learning_rate / learning_rate)
        self.overfit = OverfitWatch()

    def decide(self, step: int, evaluation: Evaluation, general: dict[str, Transcripts],
               base_runs: dict[str, Transcripts] | None, counters: Counters,
               interpolation: float | None = None, extra: dict | None = None) -> Decision:
        """Offer one evaluation (of step ``step``'s weights, or of a mix with step 0's) to the selector;
        ``extra``: more of the evaluation for its metrics record."""
        loop = self.loop
        wer = evaluation.scores.wer
        records, messages = [], []
        # The forgetting budget: with general sets, only checkpoints whose general WER rose by at most
        # loop.forgetting_budget compete on target WER (see asrtune.evaluation.forgetting).
        rises = forgetting_of(general, base_runs, loop.forgetting_measure) if general else {}
        forgetting = max(rises.values()) if rises else None
        improved = self.selector.observe(step, wer, forgetting, interpolation)
        if counters.baseline is None:
            counters.baseline = evaluation.summary()
        if interpolation is None:  # a mix of weights is no training progress: LR control does not see it
            self._watch_training(step, wer, counters, records, messages)
        record = {"step": step, "eval_wer": wer, "eval_cer": evaluation.scores.cer,
                  "best_wer": self.selector.best_wer, "kept": improved}
        record.update(extra or {})
        if interpolation is not None:
            record["interpolation"] = interpolation
        if evaluation.references and len(evaluation.references) == len(evaluation.hypotheses):
            stats = hallucination_stats(evaluation.references, evaluation.hypotheses, self.language)
            record.update(loops=stats.loops, refusals=stats.refusals, too_long=stats.too_long,
                          loops_stopped=len(evaluation.flagged.get("loops", [])))
        budget = loop.forgetting_budget
        what = f"step {step}" if interpolation is None else f"step 0 + {interpolation:g} x (step {step} - step 0)"
        if rises:
            record.update(general_wer_rise=rises, within_budget=within_budget(forgetting, budget))
            unit = " relative" if loop.forgetting_measure == "relative" else ""
            messages.append(f"{what}: general WER rise {forgetting:+.4f}{unit} (budget {budget:.4f})")
        records.append(record)
        messages.append(f"{what}: eval WER {wer:.4f} (best {self.selector.best_wer:.4f} at {self.kept_name()})"
                        + ("  kept" if improved else ""))
        return Decision(improved=improved, stop=self.selector.should_stop, rises=rises, records=records,
                        messages=messages)

    def _watch_training(self, step: int, wer: float, counters: Counters, records: list[dict],
                        messages: list[str]) -> None:
        """Overfitting warnings and WER-driven LR changes, from the loss since the last evaluation."""
        losses = counters.loss_since_eval
        mean_loss = sum(losses) / len(losses) if losses else None
        counters.loss_since_eval = []
        warning = self.overfit.observe(mean_loss, wer)
        if warning:
            counters.warnings.append(warning)
            messages.append(f"warning: {warning}")
        change = self.plateau.observe(step, wer)
        if change:
            messages.append(f"step {step}: LR x{change['scale_to']:.3g} of schedule ({change['reason']})")
            records.append({"step": step, "lr_change": change})

    def kept_name(self) -> str:
        selector = self.selector
        if selector.best_interpolation is None:
            return f"step {selector.best_step}"
        return f"step {selector.best_step} interpolated {selector.best_interpolation:g}"

    def state_dict(self) -> dict:
        return {"selector": self.selector.state_dict(), "plateau": self.plateau.state_dict(),
                "overfit": self.overfit.state_dict()}

    def shared_state(self, counters: Counters) -> dict:
        """What the other processes take on after the main process decided (:meth:`take_shared_state`)."""
        return {**self.state_dict(), "counters": asdict(counters)}

    def take_shared_state(self, state: dict, counters: Counters) -> None:
        """The main process's decision state, and the counters a decision changes."""
        self.load_state_dict(state)
        decided = Counters(**state["counters"])
        counters.baseline, counters.warnings = decided.baseline, decided.warnings
        counters.loss_since_eval = decided.loss_since_eval

    def load_state_dict(self, state: dict) -> None:
        self.selector.load_state_dict(state["selector"])
        self.plateau.load_state_dict(state["plateau"])
        self.overfit.load_state_dict(state["overfit"])
