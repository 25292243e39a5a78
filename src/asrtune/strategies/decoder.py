"""``decoder``: the encoder is frozen whole and only the decoder trains.

Not one of the paper's five, but the cheapest useful strategy on a CPU: with nothing in the encoder
training, the recipe computes each utterance's encoder output once and trains the decoder on it,
so a step costs a decoder pass instead of a 30-second encoder pass. Domain vocabulary (drug names,
jargon) is learned mostly in the decoder; accents and noisy audio need the encoder (``full``,
``freeze``, ``lora``). ``decoder+lora`` puts LoRA in the decoder only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asrtune.strategies.base import STRATEGIES, Strategy, module_map, set_trainable


@STRATEGIES.register("decoder")
@dataclass(frozen=True, kw_only=True)
class DecoderOnly(Strategy):
    name = "decoder"
    kind = "select"
    default_lr = 1e-5  # as full fine-tuning (seed 002); the demo's 1e-4 was measured on tiny.en

    def frozen_modules(self, model: torch.nn.Module) -> frozenset[str]:
        return frozenset({module_map(model).encoder})

    def apply(self, model: torch.nn.Module, frozen: frozenset[str] = frozenset()) -> torch.nn.Module:
        set_trainable(model, frozen)
        return model
