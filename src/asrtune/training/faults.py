"""Steps whose loss or gradients are not finite: skipped, counted, and fatal after too many in a row."""

from __future__ import annotations

import math
from dataclasses import dataclass

from asrtune.errors import AsrtuneError

__all__ = ["NonFiniteGuard", "NonFiniteLoss"]


class NonFiniteLoss(AsrtuneError):
    """Too many consecutive non-finite steps; the run stops with its checkpoints as they were."""


@dataclass
class NonFiniteGuard:
    """Decide whether a step's update is applied.

    Args:
        limit: consecutive non-finite steps that stop the run.
    """

    limit: int
    skipped: int = 0
    in_a_row: int = 0

    def check(self, step: int, loss: float, grad_norm: float | None) -> bool:
        """True when the step may update the weights.

        Raises:
            NonFiniteLoss: the ``limit``-th non-finite step in a row.
        """
        finite = math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm))
        if finite:
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise NonFiniteLoss(
                f"step {step}: loss {loss} / gradient norm {grad_norm} not finite for {self.in_a_row} steps in a "
                f"row (loop.max_nonfinite_steps={self.limit}); stopped. checkpoints/best and checkpoints/last "
                "hold the last finite state: lower the learning rate, check the data near this step, or "
                "train in fp32 (--set loop.mixed_precision=no)")
        return False

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.in_a_row = int(state["skipped"]), int(state["in_a_row"])


