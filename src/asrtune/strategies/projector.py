"""``projector``: only the audio-to-text projector trains (SLAM-ASR; Fun-ASR's advice below ~1000 h of data).

LLM families only (Whisper has no projector). An ``add``-kind strategy: it freezes every other
pretrained weight and marks the projector's parameters as added, so a later addition keeps them
training (``projector+lora:r=8,alpha=32`` trains the projector and LoRA on the LLM). The projector
stays a plain module, so exports hold it as it trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asrtune.errors import AsrtuneError
from asrtune.strategies.base import STRATEGIES, Strategy, model_core, module_map


@STRATEGIES.register("projector")
@dataclass(frozen=True, kw_only=True)
class Projector(Strategy):
    name = "projector"
    kind = "add"
    default_lr = 1e-4  # SLAM-ASR trains its linear projector at 1e-4
    families = ("qwen2_audio", "qwen3_asr")

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
        for parameter in model_core(model).get_submodule(path).parameters():
            parameter.requires_grad_(True)
            parameter.asrtune_added = True
        return model
