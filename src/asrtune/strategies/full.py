"""``full``: every weight trains (the paper's vanilla fine-tuning, FT), but the fixed encoder positions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asrtune.strategies.base import STRATEGIES, Strategy, set_trainable


@STRATEGIES.register("full")
@dataclass(frozen=True, kw_only=True)
class Full(Strategy):
    name = "full"
    kind = "select"
    default_lr = 1e-5  # seed 002, section 3.2
    family_lr = {"qwen2_audio": 2e-5, "qwen3_asr": 2e-5}  # Qwen3-ASR's official fine-tuning recipe

    def apply(self, model: torch.nn.Module, frozen: frozenset[str] = frozenset()) -> torch.nn.Module:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        set_trainable(model, frozen)
        return model
