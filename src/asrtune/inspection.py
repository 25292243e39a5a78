"""Parameter accounting: what a strategy trains, in total and module by module."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch

__all__ = ["count_parameters", "ModuleCount", "module_counts"]

_WRAPPERS = re.compile(r"^(base_model\.model\.)?(model\.)?")
_STEM = ("encoder.conv1", "encoder.conv2", "encoder.embed_positions")
_AUDIO_STEM = ("audio_tower.conv1", "audio_tower.conv2", "audio_tower.embed_positions")  # LLM families


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return trainable, total


@dataclass(frozen=True)
class ModuleCount:
    module: str
    trainable: int
    total: int

    def as_dict(self) -> dict:
        return asdict(self)


def _group(name: str) -> str:
    """``base_model.model.model.encoder.layers.3.self_attn.q_proj.lora_A.default.weight`` -> ``encoder.layers.3``."""
    name = _WRAPPERS.sub("", name)
    if name.startswith(_STEM):
        return "encoder.stem"
    if name.startswith(_AUDIO_STEM):
        return "audio_tower.stem"
    match = re.match(r"^((?:encoder|decoder|audio_tower|language_model)\.layers\.\d+)\.", name)
    if match:
        return match.group(1)
    return name.rsplit(".", 1)[0]


def _order(group: str) -> tuple:
    side = (0 if group.startswith(("encoder", "audio_tower")) else 1 if group.startswith("multi_modal_projector")
            else 2 if group.startswith(("decoder", "language_model")) else 3)
    layer = re.search(r"layers\.(\d+)$", group)
    position = 0 if "stem" in group or "embed" in group else 1 if layer else 2
    return side, position, int(layer.group(1)) if layer else 0, group


def module_counts(model: torch.nn.Module) -> list[ModuleCount]:
    """Trainable and total parameters per stem, layer and top-level module, encoder first."""
    groups: dict[str, list[int]] = {}
    seen: set[int] = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        counts = groups.setdefault(_group(name), [0, 0])
        counts[0] += parameter.numel() if parameter.requires_grad else 0
        counts[1] += parameter.numel()
    return [ModuleCount(g, *groups[g]) for g in sorted(groups, key=_order)]
