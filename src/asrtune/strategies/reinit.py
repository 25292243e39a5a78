"""``reinit:m=M``: re-initialise the top M encoder layers, freeze the stem and the rest (the paper's RIFT).

Every Linear weight in those layers is drawn Xavier-normal with bias 0, every LayerNorm set to
weight 1, bias 0 (seed 002, section 3.3). The re-initialised layers and the decoder train. The paper
finds M = 1 the least harmful and M = 5 destroys recognition (Fig. 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asrtune.errors import AsrtuneError
from asrtune.strategies.base import STRATEGIES, Strategy, encoder_layer_count, encoder_layer_names, encoder_of, \
    set_trainable, stem_modules


def reinitialise(module: torch.nn.Module) -> None:
    """Xavier-normal Linear weights, zero biases, LayerNorm 1/0, for every submodule."""
    for child in module.modules():
        if isinstance(child, torch.nn.Linear):
            torch.nn.init.xavier_normal_(child.weight)
            if child.bias is not None:
                torch.nn.init.zeros_(child.bias)
        elif isinstance(child, torch.nn.LayerNorm):
            torch.nn.init.ones_(child.weight)
            torch.nn.init.zeros_(child.bias)


@STRATEGIES.register("reinit")
@dataclass(frozen=True, kw_only=True)
class Reinit(Strategy):
    name = "reinit"
    kind = "select"
    default_lr = 1e-5  # seed 002
    m: int = 1

    def __post_init__(self) -> None:
        if self.m < 1:
            raise ValueError("m must be >= 1")

    def frozen_modules(self, model: torch.nn.Module) -> frozenset[str]:
        layers = encoder_layer_count(model)
        if self.m > layers:
            raise AsrtuneError(f"reinit:m={self.m}, but the encoder has only {layers} layers")
        return stem_modules(model) | encoder_layer_names(model, range(layers - self.m))

    def apply(self, model: torch.nn.Module, frozen: frozenset[str] = frozenset()) -> torch.nn.Module:
        layers = encoder_of(model).layers
        with torch.no_grad():
            for layer in layers[len(layers) - self.m :]:
                reinitialise(layer)
        set_trainable(model, frozen)
        return model
