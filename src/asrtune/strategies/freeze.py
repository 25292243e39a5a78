"""``freeze:n=N``: the encoder's stem and its bottom N layers are frozen; the rest trains (the paper's FFT).

Seed 002 (section 3.3, Fig. 2) freezes n = 10..31 of large-v2's 32 encoder layers and finds the best
n at or below 20: the bottom layers encode acoustics that transfer across languages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asrtune.errors import AsrtuneError
from asrtune.strategies.base import STRATEGIES, Strategy, encoder_layer_count, encoder_layer_names, set_trainable, \
    stem_modules


@STRATEGIES.register("freeze")
@dataclass(frozen=True, kw_only=True)
class Freeze(Strategy):
    name = "freeze"
    kind = "select"
    default_lr = 1e-5  # seed 002
    n: int = 0

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must be >= 0")

    def frozen_modules(self, model: torch.nn.Module) -> frozenset[str]:
        layers = encoder_layer_count(model)
        if self.n > layers:
            raise AsrtuneError(f"freeze:n={self.n}, but the encoder has only {layers} layers")
        return stem_modules(model) | encoder_layer_names(model, range(self.n))

    def apply(self, model: torch.nn.Module, frozen: frozenset[str] = frozenset()) -> torch.nn.Module:
        set_trainable(model, frozen)
        return model
