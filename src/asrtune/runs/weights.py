"""What a checkpoint folder holds of the model: the trainable parameters (``trainable.safetensors``) and
``meta.json``. Only what the strategy trains is stored; the base weights come from the source named in the
run's ``config.yaml``, so a LoRA run's checkpoint is a few MB.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from asrtune.errors import AsrtuneError

__all__ = ["TRAINABLE", "trainable_state", "save_trainable", "load_trainable"]

TRAINABLE = "trainable.safetensors"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, by name, detached and contiguous on CPU."""
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: torch.nn.Module, folder: Path, meta: dict) -> None:
    """Write ``trainable.safetensors`` and ``meta.json`` into ``folder`` (not atomically by itself)."""
    state = trainable_state(model)
    # Tied weights (decoder embeddings == output projection) appear once in named_parameters.
    save_file(state, str(folder / TRAINABLE))
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))


def load_trainable(model: torch.nn.Module, folder: Path) -> dict:
    """Load a checkpoint's trainable parameters into a model built with the same strategy; returns its meta.

    Raises:
        AsrtuneError: the checkpoint names parameters the model lacks, or misses ones it trains.
    """
    state = load_file(str(folder / TRAINABLE))
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    expected = {n for n, p in params.items() if p.requires_grad}
    missing = sorted(expected - set(state))
    if unknown or missing:
        raise AsrtuneError(f"{folder}: checkpoint does not match the strategy "
                           f"(unknown: {unknown[:3]}, missing: {missing[:3]})")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].dtype))
    meta_path = folder / "meta.json"
    return json.loads(meta_path.read_text()) if meta_path.exists() else {}
