"""Which checkpoint is kept: the lowest target WER, under the forgetting budget, and when to stop.

Every evaluation is offered to :class:`CheckpointSelector`; it keeps the best one (see
:func:`asrtune.evaluation.forgetting.checkpoint_rank`) and counts evaluations without improvement
for ``loop.patience``. Its state goes into the checkpoint, so a resumed run decides as the
uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from asrtune.evaluation.forgetting import checkpoint_rank, is_better

__all__ = ["CheckpointSelector"]


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
