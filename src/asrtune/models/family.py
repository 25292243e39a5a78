"""The model-family interface: what asrtune needs to know about one kind of speech model.

A family (``whisper``, ``qwen2_audio``, ``qwen3_asr``) gives everything the rest of asrtune needs to know
about one kind of model, so that no caller tests a family's identity: loading (a folder or hub id), the
training sequences of a transcript (prompt masked from the loss, target = transcript + end token), the
training forward's summed loss, the frozen prefix of its audio encoder (what can be cached, its shape,
encoding it and running the layers above it), batched decoding with the same prompt (prompt stripped from
the output), what it supports (short encoder input, long-form transcription, new language tokens), the
module map that strategies address, and export preparation. One file per family registers its class with
:data:`FAMILIES`; :func:`family_of` finds a model's family.

Module names in a family's :class:`ModuleMap` are relative to the family's *core* module (the one
holding the audio encoder, the projector if any and the text decoder / LLM): ``WhisperModel`` for
Whisper, ``Qwen2AudioModel`` for Qwen2-Audio.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from asrtune.decodings import DECODINGS
from asrtune.errors import AsrtuneError
from asrtune.registry import Registry

__all__ = ["ModuleMap", "CachePlan", "CtcSettings", "BatchDecode", "ModelFamily", "FAMILIES", "family_of",
           "family_named", "family_for_folder", "family_for_model_type", "family_for_processor", "model_core",
           "core_prefix", "trains"]

_FAMILY_MODULES = ("whisper", "qwen2_audio", "qwen3_asr")


@dataclass(frozen=True, kw_only=True)
class ModuleMap:
    """Where a family's parts sit, relative to its core module.

    Attributes:
        encoder: the audio encoder (has ``.layers``).
        decoder: the text decoder or LLM (has ``.layers``).
        projector: the audio-to-text projector (None: Whisper has none).
        stem: the encoder's input stem (convolutions, positions): frozen by ``freeze`` and ``reinit``.
        fixed: parameters that never train (fixed sinusoidal positions).
        llm_linears: the LLM's linear layers LoRA targets by default (empty: use the strategy's targets
            everywhere, as for Whisper).
        head: the output projection when it sits outside the core (``lm_head``; trains with the LLM when
            untied), or None (Whisper's is tied to its token embeddings).
    """

    encoder: str
    decoder: str
    projector: str | None = None
    stem: tuple[str, ...] = ()
    fixed: tuple[str, ...] = ()
    llm_linears: tuple[str, ...] = ()
    head: str | None = None


@dataclass(frozen=True)
class CachePlan:
    """The frozen prefix of an audio encoder whose output is cached: its stem plus ``layers`` layers; ``whole``
    adds the final layer norm (the cached tensor is then the encoder's output)."""

    layers: int
    whole: bool


@dataclass(frozen=True, eq=False)
class CtcSettings:
    """CTC of the projected audio against the LLM's input embeddings, added to the loss (LLM families).

    Attributes:
        weight: the CTC loss's weight beside the cross-entropy through the LLM.
        only: the CTC loss alone: the LLM is not run (an alignment stage).
        vocab: (V,) the embedding rows scored, ``vocab[0]`` the blank.
        index: (vocabulary size,) each token id's position in ``vocab``, -1 where it is not scored.
    """

    weight: float
    only: bool
    vocab: torch.Tensor
    index: torch.Tensor


@dataclass(frozen=True, kw_only=True)
class BatchDecode:
    """One batch's transcripts and how each ended, row by row.

    Attributes:
        texts: the transcripts (prompt and special tokens stripped).
        capped: reached ``max_new_tokens`` without an end token (and did not loop).
        looped: ended in a loop (the repetition guard stopped it, or the kept hypothesis ends repeating).
        temperatures: the last temperature each row was decoded at: 0.0, or the fallback it needed (``deploy``; as
            faster-whisper's segments report it, the last one tried when every one failed).
        no_speech: dropped as no speech (``deploy``: the no-speech probability and the log-probability test).
    """

    texts: list[str]
    capped: list[bool]
    looped: list[bool]
    temperatures: list[float]
    no_speech: list[bool]

    @classmethod
    def of(cls, texts: list[str], capped: list[bool], looped: list[bool] | None = None) -> BatchDecode:
        """A decode without fallbacks: every row at temperature 0, none dropped as no speech."""
        looped = looped or [False] * len(texts)
        return cls(texts=texts, capped=[c and not loop for c, loop in zip(capped, looped, strict=True)],
                   looped=looped, temperatures=[0.0] * len(texts), no_speech=[False] * len(texts))


def trains(module: torch.nn.Module) -> bool:
    """True when any parameter of ``module`` trains."""
    return any(p.requires_grad for p in module.parameters())


class ModelFamily:
    """One family of speech models. Subclasses register with :data:`FAMILIES` (stateless; one instance each).

    Adding a family is one file in ``models/`` that subclasses this, fills the class attributes and the
    methods that raise NotImplementedError, and registers the class; its name goes into
    ``_FAMILY_MODULES``.
    """

    name: ClassVar[str]
    display_name: ClassVar[str]  # how messages name the family ("Whisper", "Qwen2-Audio")
    core_class: ClassVar[str]  # class name of the core module, found inside any wrapper
    model_class: ClassVar[str]  # the plain transformers class an export holds
    model_types: ClassVar[tuple[str, ...]]  # config.json ``model_type`` values this family loads
    processor_classes: ClassVar[tuple[str, ...]]
    modules: ClassVar[ModuleMap]
    max_label_tokens: ClassVar[int]
    decode_guards: ClassVar[bool] = False  # new tokens bounded by duration, loops stopped (asrtune.models.guards)
    short_input: ClassVar[bool] = False  # the encoder runs on a cut window (loop.short_input, evaluate)
    long_form: ClassVar[bool] = False  # asrtune transcribe (long-form, timestamps) and CTranslate2 export
    new_language_tokens: ClassVar[bool] = False  # language: new:xx,init=yy grows the vocabulary
    timestamp_tokens: ClassVar[bool] = False  # data.timestamps: labels with the model's timestamp tokens
    decodings: ClassVar[tuple[str, ...]] = DECODINGS[:1]  # what ``decode(decoding=...)`` takes: greedy
    ctc: ClassVar[bool] = False  # CTC onto the text side's embeddings (loop.ctc_weight, loop.ctc_only)

    # --- loading ----------------------------------------------------------------------------------------

    def load(self, location: Path | str, dtype: torch.dtype, **options):
        """(model, processor) from an HF folder or hub id; ``options`` go to ``from_pretrained`` (a
        ``quantization_config``). Raises AsrtuneError when they cannot load."""
        raise NotImplementedError

    # --- training data ----------------------------------------------------------------------------------

    def sequences(self, processor, texts: Sequence[str], ids: Sequence[str], languages: Sequence[str | None],
                  valid_frames: Sequence[int], *, multilingual: bool, task: str) -> tuple[list[np.ndarray], list[int]]:
        """Token ids per utterance and how many of them (from the start) are prompt, not target.

        Raises:
            AsrtuneError: a sequence longer than the model holds.
        """
        raise NotImplementedError

    def timestamp_sequences(self, processor, segments: Sequence[Sequence], ids: Sequence[str],
                            languages: Sequence[str | None], durations: Sequence[float], *, multilingual: bool,
                            task: str) -> list[np.ndarray | None]:
        """Token ids per utterance with the model's timestamp tokens around each timed segment (``.start``,
        ``.end`` in seconds from the utterance's start, ``.text``); None where an utterance has no segments or
        they do not fit its window. Every token is a target (no prompt part).

        Raises:
            AsrtuneError: the family has no timestamp tokens, or a sequence is longer than the model holds.
        """
        raise AsrtuneError(f"data.timestamps: timestamp tokens are Whisper's; {self.display_name} has none")

    def collate(self, items: list[dict], pad_to_multiple_of: int, processor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: dict, *, plan=None,
             ctc: CtcSettings | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed token cross-entropy over the targets and the number of target tokens (with ``ctc``, families
        that have it add the CTC loss)."""
        raise NotImplementedError

    # --- decoding ---------------------------------------------------------------------------------------

    def decode(self, loaded, features: torch.Tensor, frames: Sequence[int], *, language: str | None, task: str,
               max_new_tokens: int, decoding: str = "greedy", **generate_options) -> BatchDecode:
        """Transcripts of one batch (prompt stripped) and how each ended.

        ``decoding``: one of :attr:`decodings`. ``greedy`` (``num_beams`` > 1: beam search) stops a row whose
        tail repeats (:class:`asrtune.models.guards.RepetitionStop`); a row that never loops decodes as
        without the guard.
        """
        raise NotImplementedError

    def end_token_ids(self, processor) -> list[int]:
        """Tokens that end a hypothesis."""
        return [processor.tokenizer.eos_token_id]

    def ctc_decode(self, loaded, features: torch.Tensor, frames: Sequence[int]) -> list[str]:
        """Greedy CTC transcripts of one batch (families with ``ctc``)."""
        raise AsrtuneError(f"{self.display_name} has no CTC head: decode it with generate")

    # --- the frozen prefix (training caches its output) ------------------------------------------------

    def cache_plan(self, model: torch.nn.Module) -> CachePlan | None:
        """The largest frozen prefix of the audio encoder whose output is the same at every step (nothing in it
        trains, no dropout), or None when there is none worth caching."""
        raise NotImplementedError

    def prefix_shape(self, model: torch.nn.Module, processor=None) -> tuple[int, int]:
        """One cached utterance's shape (positions, width)."""
        raise NotImplementedError

    def encode_prefix(self, model: torch.nn.Module, features: torch.Tensor, plan: CachePlan,
                      frames: torch.Tensor) -> torch.Tensor:
        """The cached prefix's output (B, positions, width) for log-mels (B, n_mels, frames) whose valid frames
        are ``frames`` (B,), in eval mode and without gradients."""
        raise NotImplementedError

    # --- languages --------------------------------------------------------------------------------------

    def add_language_token(self, model: torch.nn.Module, processor, language: str, init: str) -> int:
        """Grow the vocabulary by ``<|language|>``, initialised from ``<|init|>``'s embedding; returns its id.

        Raises:
            AsrtuneError: the family has no language tokens to grow.
        """
        raise AsrtuneError(f"language new:{language}: new language tokens are for Whisper models, not "
                           f"{self.display_name}")

    # --- export -----------------------------------------------------------------------------------------

    def probe_logits(self, model: torch.nn.Module) -> torch.Tensor:
        """Logits for a fixed input, to compare a model before and after merging its strategy."""
        raise NotImplementedError

    def prepare_export(self, model: torch.nn.Module, processor) -> None:
        """Settings a plain runtime needs to decode the exported model as asrtune does (in place)."""

    def export_record(self, processor) -> dict:
        """What the export's ``asrtune_export.json`` records for this family beyond the common fields."""
        return {}

    # --- module map -------------------------------------------------------------------------------------

    def owns(self, model: torch.nn.Module) -> bool:
        return any(type(m).__name__ == self.core_class for m in model.modules())

    def layer_classes(self, model: torch.nn.Module) -> tuple[type[torch.nn.Module], ...]:
        """The transformer block classes of the audio encoder and the decoder / LLM (``WhisperEncoderLayer``,
        ``WhisperDecoderLayer``; ``Qwen2AudioEncoderLayer``, ``Qwen2DecoderLayer`` or the assembled LLM's):
        the units FSDP shards and gradient checkpointing recomputes."""
        core = model_core(model)
        classes: list[type[torch.nn.Module]] = []
        for part in (self.modules.encoder, self.modules.decoder):
            for layer in core.get_submodule(part).layers:
                if type(layer) not in classes:
                    classes.append(type(layer))
        return tuple(classes)

    def empty_model(self, config: dict) -> torch.nn.Module:
        """The model a ``config.json``'s contents describe, on the meta device (shapes only, no memory).

        Raises:
            AsrtuneError: transformers cannot build it from this config.
        """
        import transformers

        model_class = getattr(transformers, self.model_class)
        try:
            model_config = model_class.config_class(**{k: v for k, v in config.items() if k != "model_type"})
            with torch.device("meta"):
                return model_class(model_config)
        except (TypeError, ValueError) as error:
            raise AsrtuneError(f"cannot build a {self.display_name} from this config: {error}") from error


FAMILIES: Registry[type[ModelFamily]] = Registry("model family")
_loaded = False
_instances: dict[str, ModelFamily] = {}


def _load_families() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for name in _FAMILY_MODULES:
            importlib.import_module(f"asrtune.models.{name}")


def family_named(name: str) -> ModelFamily:
    """The registered family ``name`` (one shared instance)."""
    _load_families()
    if name not in _instances:
        _instances[name] = FAMILIES.get(name)()
    return _instances[name]


def _families() -> list[ModelFamily]:
    _load_families()
    return [family_named(name) for name in FAMILIES.names()]


def family_of(model: torch.nn.Module) -> ModelFamily:
    """The family of a model, possibly wrapped (PEFT, DDP, the training forward).

    Raises:
        AsrtuneError: no family knows the model.
    """
    families = {f.core_class: f for f in _families()}
    for module in model.modules():
        family = families.get(type(module).__name__)
        if family is not None:
            return family
    raise AsrtuneError(f"{type(model).__name__}: asrtune needs a Whisper model or one of another family it "
                       f"knows ({', '.join(FAMILIES.names())})")


def family_for_processor(processor) -> ModelFamily:
    for family in _families():
        if type(processor).__name__ in family.processor_classes:
            return family
    raise AsrtuneError(f"{type(processor).__name__}: not a processor of a family asrtune knows")


def family_for_folder(folder: Path) -> ModelFamily:
    """The family whose ``model_type`` an HF folder's ``config.json`` names (Whisper when unreadable)."""
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        model_type = None
    return family_for_model_type(model_type, where=str(folder))


def family_for_model_type(model_type: str | None, where: str = "the config") -> ModelFamily:
    """The family that loads a ``config.json`` ``model_type`` (None: Whisper, whose old configs may lack it)."""
    for family in _families():
        if model_type in family.model_types:
            return family
    if model_type is None:
        return family_named("whisper")
    raise AsrtuneError(f"{where}: model_type {model_type!r} is not one asrtune fine-tunes "
                       f"(families: {', '.join(FAMILIES.names())})")


def model_core(model: torch.nn.Module) -> torch.nn.Module:
    """The family's core module inside a possibly wrapped model (``WhisperModel``, ``Qwen2AudioModel``)."""
    core_class = family_of(model).core_class
    for module in model.modules():
        if type(module).__name__ == core_class:
            return module
    raise AsrtuneError("model core not found")  # unreachable: family_of found it


def core_prefix(model: torch.nn.Module) -> str:
    """The core's qualified name inside ``model`` plus a dot ("" when the model is the core)."""
    core = model_core(model)
    for name, module in model.named_modules():
        if module is core:
            return f"{name}." if name else ""
    raise AsrtuneError("model core not found")


def load_pretrained(model_class, location: Path | str, dtype: torch.dtype, *, label: str,
                    processor_classes: Sequence[str], **options):
    """``model_class.from_pretrained`` and ``AutoProcessor.from_pretrained`` of one folder or hub id.

    Raises:
        AsrtuneError: either does not load, or the processor is not one of ``processor_classes``.
    """
    from transformers import AutoProcessor

    try:
        model = model_class.from_pretrained(location, dtype=dtype, **options)
        processor = AutoProcessor.from_pretrained(location)
    except (OSError, ValueError) as error:
        raise AsrtuneError(f"cannot load {label} from {location}: {str(error).splitlines()[0]}") from error
    if type(processor).__name__ not in processor_classes:
        raise AsrtuneError(f"{location}: its processor is a {type(processor).__name__}, not a "
                           f"{' or '.join(processor_classes)}")
    return model, processor
