"""Run folders and checkpoints, written atomically.

A run folder holds ``config.yaml`` (resolved), ``metrics.jsonl``, ``results.json``,
``predictions.jsonl``, ``tensorboard/`` and ``checkpoints/``:

* ``checkpoints/best/``: the trainable parameters at the lowest eval WER (``trainable.safetensors``)
  and ``meta.json``. Only what the strategy trains is stored; the base weights come from the source
  named in ``config.yaml``, so a LoRA run's checkpoint is a few MB.
* ``checkpoints/last/``: the same plus ``training_state.pt`` (optimizer, scheduler, every process's
  RNG and data-loader position, the run's counters and the state of its LR control, checkpoint
  selector and non-finite guard), for ``--resume``. It loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from asrtune.config import config_from_dict
from asrtune.errors import AsrtuneError

__all__ = ["trainable_state", "write_dir_atomically", "save_trainable", "load_trainable", "load_run_model",
           "rng_state", "set_rng_state", "save_training_state", "load_training_state", "BEST", "LAST",
           "TRAINING_STATE"]

BEST = "best"
LAST = "last"
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


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, by name, detached and contiguous on CPU."""
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def write_dir_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Fill a fresh temporary folder with ``write`` and swap it in; a crash leaves the old one whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        write(staging)
        if target.exists():
            retired = target.with_name(f".{target.name}-old")
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_trainable(model: torch.nn.Module, folder: Path, meta: dict) -> None:
    """Write ``trainable.safetensors`` and ``meta.json`` into ``folder`` (not atomically by itself)."""
    state = trainable_state(model)
    # Tied weights (decoder embeddings == output projection) appear once in named_parameters.
    save_file(state, str(folder / "trainable.safetensors"))
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))


def load_trainable(model: torch.nn.Module, folder: Path) -> dict:
    """Load a checkpoint's trainable parameters into a model built with the same strategy.

    Raises:
        AsrtuneError: the checkpoint names parameters the model lacks, or misses ones it trains.
    """
    state = load_file(str(folder / "trainable.safetensors"))
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


def load_run_model(run_dir: Path, *, dtype: torch.dtype = torch.float32, which: str = BEST, _depth: int = 0):
    """Rebuild a run's model: base weights from its config (or its ``init_from`` run), its strategy, its
    checkpoint."""
    from asrtune.models.load import LoadedModel
    from asrtune.models.new_language import apply_config_language
    from asrtune.strategies import apply_strategy
    from asrtune.training.init_from import load_start_model

    config_path = run_dir / "config.yaml"
    config = config_from_dict(yaml.safe_load(config_path.read_text()))
    folder = run_dir / "checkpoints" / which
    if not (folder / "trainable.safetensors").is_file():
        folder = run_dir / "checkpoints" / LAST
    if not (folder / "trainable.safetensors").is_file():
        raise AsrtuneError(f"{run_dir}: run has no checkpoint yet")
    base = load_start_model(config, dtype=dtype, _depth=_depth)
    apply_config_language(base, config)  # the new language token, as training added it
    model = apply_strategy(base.model, config.strategy)
    load_trainable(model, folder)
    model.eval()
    return LoadedModel(model=model, processor=base.processor, source=str(run_dir), base_dir=base.base_dir,
                       strategy=config.strategy)
