"""Gradient checkpointing (``loop.gradient_checkpointing``): each transformer layer's activations are
recomputed in the backward pass instead of kept from the forward one.

Every block of the audio encoder and the decoder / LLM (the family's ``layer_classes``) is checkpointed
with PyTorch's non-reentrant ``torch.utils.checkpoint``, through the hook transformers' layers carry
(``GradientCheckpointingLayer``: it checkpoints ``forward``, so FSDP2's hooks stay outside, and only in
training with gradients on, so ``generate`` runs as before, KV cache included). Non-reentrant because
the reentrant variant returns no gradients when a block's input does not require grad (a frozen encoder
below LoRA or adapters, the cached prefix: transformers #23170), and a block whose input and weights
are all frozen costs nothing under it: autograd records nothing there. The losses are the same as
without (the recomputation repeats the same arithmetic; dropout replays its RNG state).
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

from asrtune.errors import AsrtuneError
from asrtune.models.family import family_of

__all__ = ["enable_gradient_checkpointing"]


def enable_gradient_checkpointing(model: torch.nn.Module) -> int:
    """Checkpoint every transformer block of ``model`` (any family, any strategy applied); returns how many.

    Raises:
        AsrtuneError: the model's blocks do not take transformers' checkpointing hook.
    """
    classes = family_of(model).layer_classes(model)
    plain = [cls.__name__ for cls in classes if not issubclass(cls, GradientCheckpointingLayer)]
    if plain:
        raise AsrtuneError(f"loop.gradient_checkpointing: {', '.join(plain)} cannot be checkpointed "
                           "(not a transformers GradientCheckpointingLayer)")
    recompute = functools.partial(checkpoint, use_reentrant=False)
    count = 0
    for module in model.modules():
        if isinstance(module, classes):
            module.gradient_checkpointing = True
            module._gradient_checkpointing_func = recompute
            count += 1
    return count
