"""Merged Hugging Face export: one plain ``WhisperForConditionalGeneration`` folder per model.

Any source asrtune reads (run folder, bundled alias, CTranslate2 or HF folder) becomes a folder that
plain transformers loads with ``from_pretrained``: the strategy's changes folded into Whisper's
weights (LoRA merged), the processor (tokenizer + feature extractor) and the generation config
(language ids, ``<|notimestamps|>``, suppressed tokens, alignment heads) beside them.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from asrtune.errors import AsrtuneError
from asrtune.models.family import ModelFamily, family_of
from asrtune.models.load import LoadedModel
from asrtune.paths import write_dir_atomically
from asrtune.runs.load import load_model
from asrtune.strategies import merge_strategy
from asrtune.version import __version__

__all__ = ["EXPORT_MARKER", "MERGEABLE_HINT", "MergedModel", "export_hf", "load_merged", "merge_loaded",
           "prepare_output_dir", "save_hf", "write_marker"]

EXPORT_MARKER = "asrtune_export.json"
MERGEABLE_HINT = ("run it unmerged with `asrtune transcribe RUN` / `asrtune evaluate RUN`, or fine-tune "
                  "with a strategy that folds into Whisper's weights (full, freeze, reinit, decoder, lora)")


@dataclass(frozen=True, kw_only=True)
class MergedModel:
    """A plain Whisper model ready to save.

    Attributes:
        model: plain ``WhisperForConditionalGeneration`` (no PEFT wrapper, no extra modules), eval mode.
        processor: its feature extractor and tokenizer.
        source: what the user named.
        strategy: the strategy spec that was merged ("" for a plain model).
    """

    model: WhisperForConditionalGeneration
    processor: WhisperProcessor
    source: str
    strategy: str = ""


def _plain_parameter_names(model: torch.nn.Module) -> set[str]:
    with torch.device("meta"):
        reference = type(model)(model.config)
    return set(reference.state_dict())


def _check_plain(model: torch.nn.Module, strategy: str, family: ModelFamily) -> torch.nn.Module:
    """Refuse anything but a plain model of the family's transformers class with exactly its parameters."""
    if type(model).__name__ != family.model_class:
        raise AsrtuneError(f"strategy {strategy!r} left a {type(model).__name__}, not a plain "
                           f"{family.display_name} model: {MERGEABLE_HINT}")
    extra = sorted(set(model.state_dict()) - _plain_parameter_names(model))
    if extra:
        raise AsrtuneError(f"strategy {strategy!r} added modules plain Whisper cannot hold "
                           f"({', '.join(extra[:3])}{', …' if len(extra) > 3 else ''}): {MERGEABLE_HINT}")
    return model


def merge_loaded(loaded: LoadedModel) -> MergedModel:
    """Fold ``loaded``'s strategy into plain Whisper weights and check nothing changed.

    Raises:
        AsrtuneError: the strategy cannot be merged (its message names the alternative), or the merged
            model's outputs differ from the unmerged ones.
    """
    model, family = loaded.model, loaded.family
    if loaded.strategy:
        before = family.probe_logits(model)
        try:
            model = merge_strategy(model, loaded.strategy)
        except AsrtuneError as error:  # the strategy's own message names the alternative
            raise AsrtuneError(f"{loaded.source} (strategy {loaded.strategy}): {error}") from error
        model = _check_plain(model, loaded.strategy, family)
        after = family.probe_logits(model)
        gap = (before - after).abs().max().item()
        scale = before.abs().max().item() or 1.0
        if gap > 1e-3 * scale:
            raise AsrtuneError(f"{loaded.source}: merging strategy {loaded.strategy!r} changed the model's "
                               f"outputs (max logit difference {gap:.3g}); not exporting")
    else:
        model = _check_plain(model, "none", family)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.eval()
    family.prepare_export(model, loaded.processor)
    return MergedModel(model=model, processor=loaded.processor, source=loaded.source,
                       strategy=loaded.strategy)


def load_merged(source: str) -> MergedModel:
    """Load any model source asrtune accepts and merge its strategy (see :func:`merge_loaded`)."""
    # a run on a quantized base is rebuilt on that base dequantized (the weights training saw, in plain
    # nn.Linear layers), so its LoRA merges exactly instead of being quantized into the weights again
    return merge_loaded(load_model(source, dtype=torch.float32, dequantize=True))


def prepare_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a folder unless ``overwrite`` and it is empty or an earlier asrtune export."""
    if out.exists() and not out.is_dir():
        raise AsrtuneError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise AsrtuneError(f"{out} exists and is not empty "
                               "(use --overwrite to replace an earlier export)")
        if not (out / EXPORT_MARKER).is_file():
            raise AsrtuneError(f"{out} is not an asrtune export (no {EXPORT_MARKER}); refusing to replace it")


def write_marker(folder: Path, merged: MergedModel, fmt: str, **extra: object) -> None:
    """Provenance beside the weights: what was exported, how, by which asrtune."""
    record = {"format": fmt, "source": merged.source, "strategy": merged.strategy,
              "asrtune_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    (folder / EXPORT_MARKER).write_text(json.dumps(record, indent=2) + "\n")


def save_hf(merged: MergedModel, folder: Path) -> None:
    """Write weights (safetensors), config, generation config and processor files into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    merged.model.save_pretrained(folder)
    merged.processor.save_pretrained(folder)
    # transformers 5 nests the feature extractor in processor_config.json; faster-whisper, ctranslate2's
    # converter and older transformers read preprocessor_config.json.
    merged.processor.feature_extractor.save_pretrained(folder)
    # save_pretrained writes the generation config too; write the one the family prepared (merge_loaded) again
    # so the file on disk is exactly what runtimes (transformers, ctranslate2's converter) will read.
    merged.model.generation_config.save_pretrained(folder)


def export_hf(source: str | MergedModel, out: str | Path, *, overwrite: bool = False) -> Path:
    """Export ``source`` as a merged HF Whisper folder at ``out`` (written atomically).

    Args:
        source: any model source (run folder, bundled alias, HF or CTranslate2 folder) or a merged model.
        out: the folder to create.
        overwrite: replace ``out`` when it holds an earlier asrtune export.

    Returns:
        ``out``.
    """
    out = Path(out)
    prepare_output_dir(out, overwrite)
    merged = source if isinstance(source, MergedModel) else load_merged(source)

    def write(staging: Path) -> None:
        save_hf(merged, staging)
        write_marker(staging, merged, "hf", **family_of(merged.model).export_record(merged.processor))

    if out.is_dir() and not any(out.iterdir()):
        shutil.rmtree(out)
    write_dir_atomically(out, write)
    return out
