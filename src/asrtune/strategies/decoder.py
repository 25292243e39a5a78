"""``decoder``: the encoder is frozen whole and only the decoder trains.

Not one of the paper's five, but the cheapest useful strategy on a CPU: with nothing in the encoder
training, the recipe computes each utterance's encoder output once and trains the decoder on it,
so a step costs a decoder pass instead of a 30-second encoder pass. Domain vocabulary (drug names,
jargon) is learned mostly in the decoder; accents and noisy audio need the encoder (``full``,
``freeze``, ``lora``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asrtune.strategies.base import STRATEGIES, Strategy, whisper_core


@STRATEGIES.register("decoder")
@dataclass(frozen=True, kw_only=True)
class DecoderOnly(Strategy):
    name = "decoder"
    default_lr = 1e-5  # as full fine-tuning (seed 002); the demo's 1e-4 was measured on tiny.en

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        core = whisper_core(model)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in core.decoder.parameters():
            parameter.requires_grad_(True)
        return model
