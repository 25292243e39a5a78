"""Loading a run's model, and the model a run starts from.

A run's model is rebuilt, never stored whole: its base model (``config.yaml``'s ``model``), the language token
it added, its strategy, then its kept checkpoint (``checkpoints/best``, else ``last``).

``init_from: RUN`` starts a run from another run's weights instead of the base model's. The other run's kept
checkpoint is loaded onto its own base model with its own strategy (and, recursively, its own
``init_from``); its strategy is then merged into the weights where it merges (full, freeze, reinit,
decoder, lora), or kept as it is where it cannot (adapter, prompt: those modules stay, frozen, and run as
they did). This run's strategy goes on top of that model. Everything that reads "the model a run started
from" takes it from :func:`load_start_model`: the recipe's setup, the base-model ("before") transcripts,
and :func:`load_run_model`. So "before" in ``results.json`` is the other run's kept model, and
``provenance.init_from`` names it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from asrtune.config import RunConfig, config_from_dict
from asrtune.errors import AsrtuneError
from asrtune.models.load import LoadedModel, load_resolved, resolve_source
from asrtune.models.new_language import apply_config_language
from asrtune.runs.layout import BEST, LAST
from asrtune.runs.weights import TRAINABLE, load_trainable
from asrtune.strategies import apply_strategy, merge_strategy

__all__ = ["load_model", "load_run_model", "load_start_model", "init_from_record", "SHAPE_KEYS", "MAX_DEPTH"]

# Whatever differs here makes the other run's weights unusable for this run's model.
SHAPE_KEYS = ("model_type", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
              "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "num_mel_bins", "vocab_size",
              "max_source_positions", "max_target_positions")
MAX_DEPTH = 8  # init_from chains longer than this are taken for a cycle


def load_model(source: str, *, dtype: torch.dtype = torch.float32, quantization: str | None = None,
               dequantize: bool = False) -> LoadedModel:
    """Load a model of any family from any source asrtune accepts: a run folder, a bundled alias, a CTranslate2
    or HF folder, or a hub id (see :mod:`asrtune.models.load`).

    Args:
        quantization: load a base model's linear layers in ``4bit`` or ``8bit`` (a run folder loads on the base
            its config names, quantized as it trained).
        dequantize: a run trained on a quantized base gets that base dequantized to ``dtype`` before its
            strategy goes on (export merges LoRA into these weights).

    Returns:
        The model in eval mode with its processor; a run's model carries its strategy (``strategy``).
    """
    kind, location = resolve_source(source)
    if kind == "run":
        return load_run_model(Path(location), dtype=dtype, dequantize=dequantize)
    return load_resolved(source, kind, location, dtype=dtype, quantization=quantization)


def _run_config(run_dir: Path, what: str = "") -> RunConfig:
    if not run_dir.is_dir():
        raise AsrtuneError(f"{what}{run_dir} is not a run folder (it does not exist)")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise AsrtuneError(f"{what}{run_dir} holds no run (no config.yaml)")
    return config_from_dict(yaml.safe_load(path.read_text()))


def load_run_model(run_dir: Path, *, dtype: torch.dtype = torch.float32, which: str = BEST,
                   dequantize: bool = False, _depth: int = 0) -> LoadedModel:
    """Rebuild a run's model: base weights from its config (or its ``init_from`` run), its strategy, its
    checkpoint ``which`` (``best``; ``last`` when the run has no kept checkpoint yet).

    Raises:
        AsrtuneError: the folder holds no run or no checkpoint.
    """
    config = _run_config(run_dir)
    folder = run_dir / "checkpoints" / which
    if not (folder / TRAINABLE).is_file():
        folder = run_dir / "checkpoints" / LAST
    if not (folder / TRAINABLE).is_file():
        raise AsrtuneError(f"{run_dir}: run has no checkpoint yet")
    base = load_start_model(config, dtype=dtype, _depth=_depth)
    if dequantize and getattr(base.model, "hf_quantizer", None) is not None:
        base.model.dequantize(dtype=dtype)  # a quantized base's weights as training saw them, in nn.Linear
    apply_config_language(base, config)  # the new language token, as training added it
    model = apply_strategy(base.model, config.strategy)
    load_trainable(model, folder)
    model.eval()
    return LoadedModel(model=model, processor=base.processor, source=str(run_dir), base_dir=base.base_dir,
                       strategy=config.strategy)


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


def load_start_model(config: RunConfig, *, dtype: torch.dtype = torch.float32, _depth: int = 0) -> LoadedModel:
    """The model a run starts from: ``config.model``, or the weights of the run ``config.init_from`` names.

    Returns:
        a :class:`~asrtune.models.load.LoadedModel` with no strategy of this run applied (``strategy`` "").

    Raises:
        AsrtuneError: the run folder is missing, holds no run or no checkpoint, or its model's shape differs
            from ``config.model``'s; or init_from runs chain into a cycle.
    """
    base = load_model(config.model, dtype=dtype, quantization=config.quantization)  # the run's quantized base
    if not config.init_from:
        return base
    if _depth >= MAX_DEPTH:
        raise AsrtuneError(f"init_from: more than {MAX_DEPTH} runs chained (a run cannot start from itself)")
    model = _source_model(Path(config.init_from), config.model, base.model, dtype, _depth)
    return LoadedModel(model=model, processor=base.processor, source=config.model, base_dir=base.base_dir)


def _source_model(run_dir: Path, model_source: str, base_model: torch.nn.Module, dtype: torch.dtype,
                  depth: int) -> torch.nn.Module:
    source_config = _run_config(run_dir, "init_from: ")
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
    run_dir = Path(run_dir)
    source_config = _run_config(run_dir, "init_from: ")
    record = {"run": str(run_dir.resolve()), "strategy": source_config.strategy, "model": source_config.model,
              "init_from": source_config.init_from or None}
    for which in (BEST, LAST):
        meta = run_dir / "checkpoints" / which / "meta.json"
        if (run_dir / "checkpoints" / which / TRAINABLE).is_file():
            saved = json.loads(meta.read_text()) if meta.is_file() else {}
            record.update(checkpoint=which, step=saved.get("step"), eval_wer=saved.get("wer"))
            break
    results = run_dir / "results.json"
    if results.is_file():
        done = json.loads(results.read_text())
        record.update(config_hash=done.get("config_hash"), git_sha=done.get("git_sha"),
                      final_wer=done.get("final_wer"))
    return record
