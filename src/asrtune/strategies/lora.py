"""``lora``: low-rank adapters on the attention projections, through PEFT (the paper's LoRAFT)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model

from asrtune.strategies.base import STRATEGIES, Strategy


@STRATEGIES.register("lora")
@dataclass(frozen=True, kw_only=True)
class Lora(Strategy):
    """LoRA on q and v of every attention (encoder self, decoder self and cross), r=32, alpha=64.

    The default learning rate, 1e-3, is the one in PEFT's Whisper int8 training example.
    """

    name = "lora"
    default_lr = 1e-3
    r: int = 32
    alpha: int = 64
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0:
            raise ValueError("r must be >= 1 and alpha > 0")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")
        if not self.targets:
            raise ValueError("targets must name at least one module")

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        config = LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                            target_modules=list(self.targets), bias="none")
        return get_peft_model(model, config)

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        """Fold the low-rank updates into the base weights (PEFT ``merge_and_unload``)."""
        return model.merge_and_unload()
