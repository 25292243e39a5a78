"""What a resume needs beside the weights: ``checkpoints/last/training_state.pt``.

A run folder's checkpoints (see :mod:`asrtune.runs.layout`):

* ``checkpoints/best/``: the trainable parameters at the lowest eval WER (``trainable.safetensors``, see
  :mod:`asrtune.runs.weights`) and ``meta.json``.
* ``checkpoints/last/``: the same plus ``training_state.pt`` (optimizer, scheduler, every process's
  RNG and data-loader position, the run's counters and the state of its LR control, checkpoint
  selector and non-finite guard), for ``--resume``. It loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from asrtune.errors import AsrtuneError

__all__ = ["rng_state", "set_rng_state", "save_training_state", "load_training_state", "TRAINING_STATE"]

TRAINING_STATE = "training_state.pt"


def rng_state() -> dict:
    """Every random generator a step draws from: Python, NumPy, torch CPU and CUDA (as plain data)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.copy()), position, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(folder: Path, state: dict) -> None:
    """Write ``training_state.pt`` (tensors and plain data only)."""
    torch.save(state, folder / TRAINING_STATE)


def load_training_state(folder: Path) -> dict:
    """Read ``training_state.pt`` with ``weights_only=True``: a checkpoint cannot run code.

    Raises:
        AsrtuneError: the file is missing or unreadable.
    """
    path = folder / TRAINING_STATE
    if not path.is_file():
        raise AsrtuneError(f"{folder}: no {TRAINING_STATE} (a checkpoint from an older asrtune cannot be resumed)")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # noqa: BLE001 - unpickling raises many kinds; name the file whatever it was
        raise AsrtuneError(f"cannot read {path}: {error}") from error
