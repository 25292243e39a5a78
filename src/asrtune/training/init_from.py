"""``init_from: RUN``: start a run from another run's weights instead of the base model's.

The other run's kept checkpoint (``checkpoints/best``, else ``last``) is loaded onto its own base model
with its own strategy (and, recursively, its own ``init_from``); its strategy is then merged into the
weights where it merges (full, freeze, reinit, decoder, lora), or kept as it is where it cannot
(adapter, prompt: those modules stay, frozen, and run as they did). This run's strategy goes on top of
that model. Everything that reads "the model a run started from" takes it from here: the recipe's
setup, the base-model ("before") transcripts, and :func:`asrtune.training.checkpoint.load_run_model`,
which rebuilds a finished run. So "before" in ``results.json`` is the other run's kept model, and
``provenance.init_from`` names it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from asrtune.config import RunConfig, config_from_dict
from asrtune.errors import AsrtuneError

__all__ = ["load_start_model", "init_from_record", "SHAPE_KEYS", "MAX_DEPTH"]

# Whatever differs here makes the other run's weights unusable for this run's model.
SHAPE_KEYS = ("model_type", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
              "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "num_mel_bins", "vocab_size",
              "max_source_positions", "max_target_positions")
MAX_DEPTH = 8  # init_from chains longer than this are taken for a cycle


def _source_config(run_dir: Path) -> RunConfig:
    if not run_dir.is_dir():
        raise AsrtuneError(f"init_from: {run_dir} is not a run folder (it does not exist)")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise AsrtuneError(f"init_from: {run_dir} holds no run (no config.yaml)")
    return config_from_dict(yaml.safe_load(path.read_text()))


def _shape(model: torch.nn.Module) -> dict:
    config = model.config
    return {key: getattr(config, key, None) for key in SHAPE_KEYS}


def _check_compatible(run_dir: Path, source_config: RunConfig, source_model: torch.nn.Module,
                      model: str, base_model: torch.nn.Module) -> None:
    theirs, ours = _shape(source_model), _shape(base_model)
    differ = [f"{k} {theirs[k]} vs {ours[k]}" for k in SHAPE_KEYS if theirs[k] != ours[k]]
    if differ:
        raise AsrtuneError(f"init_from: {run_dir} trained {source_config.model}, whose shape does not match this "
                           f"run's model {model} ({', '.join(differ[:4])}); start from a run of the same model")


def load_start_model(config: RunConfig, *, dtype: torch.dtype = torch.float32, _depth: int = 0):
    """The model a run starts from: ``config.model``, or the weights of the run ``config.init_from`` names.

    Returns:
        a :class:`~asrtune.models.load.LoadedModel` with no strategy of this run applied (``strategy`` "").

    Raises:
        AsrtuneError: the run folder is missing, holds no run or no checkpoint, or its model's shape differs
            from ``config.model``'s; or init_from runs chain into a cycle.
    """
    from asrtune.models.load import LoadedModel, load_model

    base = load_model(config.model, dtype=dtype)
    if not config.init_from:
        return base
    if _depth >= MAX_DEPTH:
        raise AsrtuneError(f"init_from: more than {MAX_DEPTH} runs chained (a run cannot start from itself)")
    model = _source_model(Path(config.init_from), config.model, base.model, dtype, _depth)
    return LoadedModel(model=model, processor=base.processor, source=config.model, base_dir=base.base_dir)


def _source_model(run_dir: Path, model_source: str, base_model: torch.nn.Module, dtype: torch.dtype,
                  depth: int) -> torch.nn.Module:
    from asrtune.strategies import merge_strategy
    from asrtune.training.checkpoint import load_run_model

    source_config = _source_config(run_dir)
    source = load_run_model(run_dir, dtype=dtype, _depth=depth + 1)
    model = source.model
    try:
        model = merge_strategy(model, source.strategy)
    except AsrtuneError:  # adapters, soft prompts: kept as modules (frozen below), not folded into weights
        model = source.model
    _check_compatible(run_dir, source_config, model, model_source, base_model)
    for parameter in model.parameters():
        parameter.requires_grad_(True)  # as a freshly loaded base: this run's strategy decides what trains
        if hasattr(parameter, "asrtune_added"):  # the other run's additions are not this run's: later
            del parameter.asrtune_added          # additions must not keep them training
    return model


def init_from_record(run_dir: str | Path) -> dict:
    """What ``results.json`` records of the run a run started from (its folder, strategy, checkpoint)."""
    import json

    from asrtune.training.checkpoint import BEST, LAST

    run_dir = Path(run_dir)
    source_config = _source_config(run_dir)
    record = {"run": str(run_dir.resolve()), "strategy": source_config.strategy, "model": source_config.model,
              "init_from": source_config.init_from or None}
    for which in (BEST, LAST):
        meta = run_dir / "checkpoints" / which / "meta.json"
        if (run_dir / "checkpoints" / which / "trainable.safetensors").is_file():
            saved = json.loads(meta.read_text()) if meta.is_file() else {}
            record.update(checkpoint=which, step=saved.get("step"), eval_wer=saved.get("wer"))
            break
    results = run_dir / "results.json"
    if results.is_file():
        done = json.loads(results.read_text())
        record.update(config_hash=done.get("config_hash"), git_sha=done.get("git_sha"),
                      final_wer=done.get("final_wer"))
    return record
