"""``projector``: only the audio-to-text projector trains (SLAM-ASR; Fun-ASR's advice below ~1000 h of data).

LLM families only (Whisper has no projector). An ``add``-kind strategy: it freezes every other
pretrained weight and marks the projector's parameters as added, so a later addition keeps them
training (``projector+lora:r=8,alpha=32`` trains the projector and LoRA on the LLM). The projector
stays a plain module, so exports hold it as it trained.

``tower_layers=N`` also trains the audio encoder's top N layers and its final LayerNorm (still the
Qwen2-Audio layout, so an export loads as ever): a Linear map alone scores the LLM's embedding directions with
too little capacity to align a frozen Whisper encoder (DESIGN.md); the frozen bottom stays cached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asrtune.errors import AsrtuneError
from asrtune.strategies.base import STRATEGIES, Strategy, encoder_of, model_core, module_map


@STRATEGIES.register("projector")
@dataclass(frozen=True, kw_only=True)
class Projector(Strategy):
    name = "projector"
    kind = "add"
    default_lr = 1e-4  # SLAM-ASR trains its linear projector at 1e-4
    families = ("qwen2_audio", "qwen3_asr")
    tower_layers: int = 0

    def __post_init__(self) -> None:
        if self.tower_layers < 0:
            raise ValueError("tower_layers must be >= 0")

    def apply(self, model: torch.nn.Module, frozen: frozenset[str] = frozenset()) -> torch.nn.Module:
        path = module_map(model).projector
        if path is None:
            raise AsrtuneError("projector: this model has no audio-to-text projector (Whisper's encoder feeds its "
                               "decoder directly); use decoder, freeze, lora or adapter")
        if path in frozen:
            raise AsrtuneError("projector: an earlier strategy froze the projector")
        for parameter in model.parameters():
            if not getattr(parameter, "asrtune_added", False):
                parameter.requires_grad_(False)
        modules = [model_core(model).get_submodule(path)]
        if self.tower_layers:
            encoder = encoder_of(model)
            if self.tower_layers > len(encoder.layers):
                raise AsrtuneError(f"projector:tower_layers={self.tower_layers}: the audio encoder has "
                                   f"{len(encoder.layers)} layers")
            modules += [*encoder.layers[len(encoder.layers) - self.tower_layers:], encoder.layer_norm]
        for module in modules:
            for parameter in module.parameters():
                parameter.requires_grad_(True)
                parameter.asrtune_added = True
        return model
