"""Which part of a Whisper-shaped audio encoder is frozen, and so can be encoded once and cached.

Whisper's encoder and Qwen2-Audio's audio tower share the shape: two convolutions and positions (the stem),
a stack of layers, a final LayerNorm. The frozen prefix is the stem and the layers below the first that trains.
"""

from __future__ import annotations

import torch

from asrtune.models.family import CachePlan, trains

__all__ = ["whisper_shaped_plan"]

_DROPOUTS = ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop")


def whisper_shaped_plan(encoder: torch.nn.Module, config) -> CachePlan | None:
    """The frozen prefix of ``encoder`` (``CachePlan``), or None when its stem trains or dropout is on (a cached
    output would then differ from what training sees)."""
    if any(getattr(config, name, 0) for name in _DROPOUTS):
        return None
    if trains(encoder.conv1) or trains(encoder.conv2) or trains(encoder.embed_positions):
        return None
    layers = 0
    for layer in encoder.layers:
        if trains(layer):
            break
        layers += 1
    return CachePlan(layers=layers, whole=layers == len(encoder.layers) and not trains(encoder.layer_norm))
