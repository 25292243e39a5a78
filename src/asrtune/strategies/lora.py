"""``lora``: low-rank adapters on the attention projections, through PEFT (the paper's LoRAFT)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asrtune.errors import AsrtuneError
from asrtune.models.family import core_prefix
from asrtune.strategies.base import STRATEGIES, Strategy, module_map, qualified_modules


@STRATEGIES.register("lora")
@dataclass(frozen=True, kw_only=True)
class Lora(Strategy):
    """LoRA on q and v of every attention (encoder self, decoder self and cross), r=32, alpha=64.

    On LLM families, LoRA goes on the LLM's linear layers (see :meth:`target_names`); their
    fine-tuning recipes use ``lora:r=8,alpha=32`` at 1e-4, the default learning rate there.

    The default learning rate, 1e-3, is the one in PEFT's Whisper int8 training example. After a
    ``select`` strategy, modules it froze whole get no LoRA (``freeze:n=4+lora`` adapts the layers
    above the fourth and the decoder).
    """

    name = "lora"
    kind = "add"
    default_lr = 1e-3
    family_lr = {"qwen2_audio": 1e-4, "qwen3_asr": 1e-4}  # ms-swift / LLaMA-Factory
    r: int = 32
    alpha: int = 64
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    all_llm_linears: bool = True  # LLM families with the default targets: every linear of the LLM's blocks

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0:
            raise ValueError("r must be >= 1 and alpha > 0")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")
        if not self.targets:
            raise ValueError("targets must name at least one module")

    def target_names(self, model: torch.nn.Module, frozen: frozenset[str]) -> list[str]:
        """Core-relative names of the linear layers LoRA goes on.

        LLM families (Qwen2-Audio, Qwen3-ASR): the LLM's layers only (the audio encoder and projector
        stay frozen, as ms-swift and LLaMA-Factory do), and with the default ``targets`` every linear
        layer of the LLM's blocks (q, k, v, o, gate, up, down) unless ``all_llm_linears=false``; Whisper:
        ``targets`` everywhere.
        """
        modules = module_map(model)
        targets, scope = self.targets, ""
        if modules.llm_linears:
            scope = modules.decoder + "."
            if targets == type(self)().targets and self.all_llm_linears:
                targets = modules.llm_linears
        return [name for name, module in qualified_modules(model, frozen).items()
                if name.startswith(scope) and name.rsplit(".", 1)[-1] in targets
                and isinstance(module, torch.nn.Linear)]

    def apply(self, model: torch.nn.Module, frozen: frozenset[str] = frozenset()) -> torch.nn.Module:
        from peft import (  # here: reading a config checks specs without loading PEFT
            LoraConfig,
            get_peft_model,
        )

        prefix = core_prefix(model)
        names = [prefix + name for name in self.target_names(model, frozen)]
        if not names:
            raise AsrtuneError(f"lora: no {'/'.join(self.targets)} modules outside the frozen ones")
        config = LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                            target_modules=names, bias="none")
        added = [p for p in model.parameters() if getattr(p, "asrtune_added", False)]
        model = get_peft_model(model, config)
        for parameter in model.parameters():
            if parameter.requires_grad:  # the LoRA weights: later additions must leave them training
                parameter.asrtune_added = True
        for parameter in added:  # PEFT freezes everything but LoRA; earlier additions keep training
            parameter.requires_grad_(True)
        return model

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        """Fold the low-rank updates into the base weights (PEFT ``merge_and_unload``)."""
        return model.merge_and_unload()

