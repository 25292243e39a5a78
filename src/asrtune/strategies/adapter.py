"""``adapter:d=64[,encoder_layers=all|top-P|none]``: bottleneck adapters (the paper's BAFT and BAFT-T).

After every decoder layer and the chosen encoder layers, the layer's output ``h`` becomes
``h + up(gelu(down(layer_norm(h))))`` with ``down: d_model -> d`` and ``up: d -> d_model``
(seed 002, section 3.4, Fig. 4). ``up`` starts at zero, so at step 0 the model is exactly the
pretrained one. Only adapters train. ``top-P`` puts encoder adapters in the top P layers only.

The adapters are child modules of the layers they follow (``...layers.3.adapter``), applied by a
forward hook, so parameter names stay those of Whisper and checkpoints hold only adapter weights.
They cannot be folded into Whisper's weights: a run with adapters is used through asrtune (its
run folder), and ``export`` to plain transformers or CTranslate2 says so. AdapterHub's ``adapters``
library was not used: its releases pin transformers 4.x, and asrtune runs on transformers 5.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from asrtune.errors import AsrtuneError
from asrtune.strategies.base import STRATEGIES, Strategy, encoder_layer_count, module_map, model_core, \
    qualified_modules

__all__ = ["Adapter", "BottleneckAdapter"]


class BottleneckAdapter(nn.Module):
    """LayerNorm -> Linear(d_model, d) -> GELU -> Linear(d, d_model); added to its input.

    Shapes: (B, T, d_model) -> (B, T, d_model).
    """

    asrtune_added = True  # marks modules that strategies add (kept trainable by later additions)

    def __init__(self, d_model: int, bottleneck: int) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(d_model)
        self.down = nn.Linear(d_model, bottleneck)
        self.activation = nn.GELU()
        self.up = nn.Linear(bottleneck, d_model)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.activation(self.down(self.layer_norm(hidden))))


def _after_layer(module: nn.Module, _inputs: tuple, output: torch.Tensor | tuple) -> torch.Tensor | tuple:
    if isinstance(output, tuple):  # older transformers return (hidden, attentions, ...)
        return (module.adapter(output[0]),) + output[1:]
    return module.adapter(output)


@STRATEGIES.register("adapter")
@dataclass(frozen=True, kw_only=True)
class Adapter(Strategy):
    name = "adapter"
    kind = "add"
    default_lr = 3e-4  # seed 002, section 3.4
    d: int = 64
    encoder_layers: str = "all"

    def __post_init__(self) -> None:
        if self.d < 1:
            raise ValueError("d must be >= 1")
        if not re.fullmatch(r"all|none|top-[1-9][0-9]*", self.encoder_layers):
            raise ValueError(f"encoder_layers must be all, none or top-P (P >= 1), got {self.encoder_layers!r}")

    def encoder_indices(self, n_layers: int) -> list[int]:
        """Which encoder layers get an adapter."""
        if self.encoder_layers == "all":
            return list(range(n_layers))
        if self.encoder_layers == "none":
            return []
        top = int(self.encoder_layers.removeprefix("top-"))
        if top > n_layers:
            raise AsrtuneError(f"adapter:encoder_layers=top-{top}, but the encoder has only {n_layers} layers")
        return list(range(n_layers - top, n_layers))

    def apply(self, model: torch.nn.Module, frozen: frozenset[str] = frozenset()) -> torch.nn.Module:
        core, modules = model_core(model), module_map(model)
        for parameter in model.parameters():
            if not getattr(parameter, "asrtune_added", False):
                parameter.requires_grad_(False)
        open_modules = qualified_modules(model, frozen)
        targets = [f"{modules.encoder}.layers.{i}" for i in self.encoder_indices(encoder_layer_count(model))]
        blocked = [name for name in targets if name not in open_modules]
        if blocked:
            raise AsrtuneError(f"adapter: {blocked[0]} is frozen by an earlier strategy; "
                               "choose encoder_layers=top-P above the frozen layers")
        if not modules.llm_linears:  # Whisper: every decoder layer too; LLM families: the audio encoder only
            targets += [f"{modules.decoder}.layers.{i}" for i in range(len(core.get_submodule(modules.decoder).layers))]
        if not targets:
            raise AsrtuneError("adapter: encoder_layers=none leaves no layer to adapt on this model")
        reference = next(core.parameters())
        width = core.get_submodule(modules.encoder).config.d_model
        for name in targets:
            layer = core.get_submodule(name)
            layer.adapter = BottleneckAdapter(width, self.d).to(reference.device, reference.dtype)
            for parameter in layer.adapter.parameters():
                parameter.asrtune_added = True
            layer.register_forward_hook(_after_layer)
        return model

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        raise AsrtuneError(
            "bottleneck adapters are extra modules that neither transformers' Whisper nor CTranslate2 "
            "can hold, so this run cannot be exported as plain weights. Use the run folder itself with "
            "asrtune (evaluate, transcribe), or train with lora, whose updates merge into the weights."
        )
