"""Weight interpolation between the start and the end of training (WiSE-FT).

Wortsman et al. (2022, "Robust fine-tuning of zero-shot models") showed that the weights
``start + a * (end - start)`` of a fine-tuned model, for ``a`` between 0 and 1, keep much of the
fine-tuning's gain on the target while losing much less of what the pretrained model knew. asrtune
applies it to what a strategy trains: with ``loop.interpolation: [a, ...]`` the recipe saves the
trainable parameters at step 0 (``checkpoints/start``) and, after the last step, scores each mix on
the eval subset and the general sets and offers it to checkpoint selection like any checkpoint.

For strategies that update pretrained weights (``full``, ``decoder``, ``freeze``) this is WiSE-FT
exactly. For added modules it scales their change from initialisation: LoRA's B starts at zero, so the
mix is ``a * B @ A'`` with ``A'`` itself mixed (not exactly ``a`` times the update); an adapter's up
projection starts at zero, so the adapter's contribution shrinks about linearly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from asrtune.errors import AsrtuneError
from asrtune.paths import write_dir_atomically
from asrtune.runs.weights import save_trainable, trainable_state

__all__ = ["START", "load_start", "mix_trainable", "save_start", "score_interpolations"]

START = "start"


def load_start(folder: Path) -> dict[str, torch.Tensor]:
    """The trainable parameters saved at step 0 (``checkpoints/start``).

    Raises:
        AsrtuneError: the folder has none (a run started without ``loop.interpolation``).
    """
    path = folder / "trainable.safetensors"
    if not path.is_file():
        raise AsrtuneError(f"loop.interpolation needs the step-0 weights in {folder}, and there are none: the run "
                           "was started without loop.interpolation (they are saved when training starts)")
    return load_file(str(path))


@torch.no_grad()
def mix_trainable(model: torch.nn.Module, start: dict[str, torch.Tensor], end: dict[str, torch.Tensor],
                  weight: float) -> None:
    """Set every trainable parameter to ``start + weight * (end - start)`` (1: the end, 0: the start).

    Raises:
        AsrtuneError: start and end name other parameters than the model trains.
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(start) != set(params) or set(end) != set(params):
        missing = sorted(set(params) ^ (set(start) & set(end)))
        raise AsrtuneError(f"weight interpolation: the saved weights do not match the trained parameters "
                           f"({', '.join(missing[:3])}{'...' if len(missing) > 3 else ''})")
    for name, param in params.items():
        first = start[name].to(device=param.device, dtype=torch.float32)
        last = end[name].to(device=param.device, dtype=torch.float32)
        param.copy_((first + weight * (last - first)).to(param.dtype))


def save_start(model: torch.nn.Module, folder: Path) -> None:
    """``checkpoints/start``: the trainable parameters before any step (written atomically)."""
    write_dir_atomically(folder, lambda staging: save_trainable(model, staging, {"step": 0}))


def score_interpolations(model: torch.nn.Module, start_folder: Path, weights: Sequence[float],
                         evaluate: Callable[[float], object]) -> None:
    """Set the model to start + a x (end - start) for each weight a (largest first) and ``evaluate(a)`` it;
    the model ends with the end-of-training weights again."""
    start = load_start(start_folder)
    end = trainable_state(model)
    for weight in sorted(set(weights), reverse=True):
        mix_trainable(model, start, end, weight)
        evaluate(weight)
    mix_trainable(model, start, end, 1.0)
