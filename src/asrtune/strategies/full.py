"""``full``: every parameter trains (the paper's vanilla fine-tuning, FT)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asrtune.strategies.base import STRATEGIES, Strategy


@STRATEGIES.register("full")
@dataclass(frozen=True, kw_only=True)
class Full(Strategy):
    name = "full"
    default_lr = 1e-5  # seed 002, section 3.2

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
