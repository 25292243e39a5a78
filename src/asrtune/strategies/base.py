"""The strategy interface, spec parsing and composition.

A spec is ``name:key=value,key=value``; ``+`` composes strategies, applied left to right. A strategy
only changes the model (which parameters train, which modules exist); the training loop is shared.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import ClassVar

import torch

from asrtune.errors import AsrtuneError
from asrtune.models.family import ModuleMap, family_of, model_core
from asrtune.registry import Registry

__all__ = ["Strategy", "STRATEGIES", "parse_spec", "apply_strategy", "merge_strategy", "default_learning_rate",
           "freeze_positional_embeddings", "qualified_modules", "encoder_layer_count",
           "stem_modules", "set_trainable", "module_map", "encoder_of", "decoder_of", "encoder_layer_names",
           "model_core"]


@dataclass(frozen=True, kw_only=True)
class Strategy:
    """One fine-tuning strategy. Subclasses are frozen dataclasses whose fields are the spec's keys.

    Two kinds compose (see :func:`apply_strategy`):

    * ``select`` strategies choose which pretrained weights train (full, freeze, reinit, decoder) and
      name the modules that stay frozen whole (:meth:`frozen_modules`).
    * ``add`` strategies insert new trainable modules (lora, adapter) and freeze every pretrained
      weight; they leave the modules an earlier ``select`` froze without additions, so a frozen
      encoder prefix stays frozen (and cacheable).
    """

    name: ClassVar[str]
    kind: ClassVar[str]  # "select" or "add"
    default_lr: ClassVar[float]
    families: ClassVar[tuple[str, ...]] = ("whisper", "qwen2_audio", "qwen3_asr")  # the model families it applies to

    def apply(self, model: torch.nn.Module, frozen: frozenset[str] = frozenset()) -> torch.nn.Module:
        """Change ``model`` in place or wrap it; return the model to train.

        Args:
            model: a model of any family, possibly already changed by earlier strategies.
            frozen: qualified names (relative to the family's core, ``WhisperModel``: ``encoder.layers.0``;
                ``Qwen2AudioModel``: ``audio_tower.layers.0``) of modules
                an earlier strategy froze whole; ``add`` strategies put nothing there.
        """
        raise NotImplementedError

    def frozen_modules(self, model: torch.nn.Module) -> frozenset[str]:
        """Modules this strategy freezes whole (``select`` strategies), relative to the model's core."""
        return frozenset()

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        """Fold this strategy's changes into plain Whisper weights (for export).

        The default suits strategies that only choose which weights train (full, freeze, reinit,
        decoder): the model is already plain. Strategies that add modules override this, or raise
        :class:`AsrtuneError` when their modules cannot be folded into Whisper's weights.
        """
        return model

    def spec(self) -> str:
        defaults = type(self)()
        changed = [f"{f.name}={_format(getattr(self, f.name))}" for f in dataclasses.fields(self)
                   if getattr(self, f.name) != getattr(defaults, f.name)]
        return self.name + (":" + ",".join(changed) if changed else "")


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


def _format(value: object) -> str:
    if isinstance(value, tuple):
        return "|".join(str(v) for v in value)
    return str(value)


def _parse_value(raw: str, hint: object, where: str) -> object:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return tuple(part for part in raw.split("|") if part)
    try:
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
    except ValueError:
        raise AsrtuneError(f"{where}: {raw!r} is not a number") from None
    if hint is bool:
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise AsrtuneError(f"{where}: {raw!r} is not true/false")
        return raw.lower() in ("true", "1", "yes")
    return raw


def _parse_one(part: str) -> Strategy:
    name, _, args = part.strip().partition(":")
    cls = STRATEGIES.get(name.strip())
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for item in filter(None, (a.strip() for a in args.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise AsrtuneError(f"strategy {name}: expected key=value, got {item!r}")
        if key not in fields:
            raise AsrtuneError(f"strategy {name}: unknown option {key!r} (known: {', '.join(sorted(fields)) or 'none'})")
        if key in kwargs:
            raise AsrtuneError(f"strategy {name}: {key} given twice")
        kwargs[key] = _parse_value(raw.strip(), hints[key], f"strategy {name}.{key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise AsrtuneError(f"strategy {name}: {error}") from error


def parse_spec(spec: str) -> list[Strategy]:
    """Parse ``name:k=v,...+name:...`` into strategies, in application order.

    Composition rules: at most one ``select`` strategy (full, freeze, reinit, decoder), and it comes
    first; then any ``add`` strategies (lora, adapter), each once. ``full`` and ``reinit`` take no
    ``add`` strategy: an addition freezes every pretrained weight, which would undo ``full`` and
    leave ``reinit``'s fresh layers untrained.

    Raises:
        AsrtuneError: unknown strategy or option, bad value, empty part, or a contradiction.
    """
    parts = spec.split("+")
    if not spec.strip() or any(not p.strip() for p in parts):
        raise AsrtuneError(f"empty strategy in spec {spec!r}")
    strategies = [_parse_one(p) for p in parts]
    names = [s.name for s in strategies]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise AsrtuneError(f"strategy spec {spec!r} names {', '.join(duplicated)} more than once")
    selects = [s for s in strategies if s.kind == "select"]
    if len(selects) > 1:
        raise AsrtuneError(f"strategy spec {spec!r} combines {' and '.join(s.name for s in selects)}: "
                           "each decides which pretrained weights train; choose one")
    if selects and strategies[0] is not selects[0]:
        raise AsrtuneError(f"strategy spec {spec!r}: {selects[0].name} must come first "
                           "(it chooses the frozen weights that later additions respect)")
    if selects and selects[0].name in ("full", "reinit") and len(strategies) > 1:
        reason = ("an addition freezes every pretrained weight, so full would change nothing"
                  if selects[0].name == "full" else "the re-initialised layers must train in full")
        raise AsrtuneError(f"strategy spec {spec!r}: {selects[0].name} cannot be combined with "
                           f"{strategies[1].name} ({reason})")
    return strategies


def module_map(model: torch.nn.Module) -> ModuleMap:
    """Where the model's family keeps its audio encoder, projector and decoder / LLM (see ``models.family``)."""
    return family_of(model).modules


def encoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The audio encoder (Whisper's encoder, Qwen2-Audio's audio tower) of a possibly wrapped model."""
    return model_core(model).get_submodule(module_map(model).encoder)


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The text decoder (Whisper) or LLM (Qwen2-Audio, Qwen3-ASR) of a possibly wrapped model."""
    return model_core(model).get_submodule(module_map(model).decoder)


def freeze_positional_embeddings(model: torch.nn.Module) -> None:
    """Fixed sinusoidal encoder positions (Whisper's, Qwen2-Audio's) never train; transformers 5 loads them
    trainable. Freeze."""
    core = model_core(model)
    for name in module_map(model).fixed:
        core.get_parameter(name).requires_grad_(False)


def apply_strategy(model: torch.nn.Module, spec: str) -> torch.nn.Module:
    """Apply every strategy in ``spec``, left to right; the encoder positions always stay frozen."""
    frozen: frozenset[str] = frozenset()
    for strategy in parse_spec(spec):
        frozen = frozen | strategy.frozen_modules(model)
        model = strategy.apply(model, frozen)
    freeze_positional_embeddings(model)
    return model


def qualified_modules(model: torch.nn.Module, frozen: frozenset[str]) -> dict[str, torch.nn.Module]:
    """Modules of the model's core by name relative to it (``encoder.layers.3.self_attn.q_proj``),
    leaving out those inside a frozen module."""
    core = model_core(model)
    return {name: module for name, module in core.named_modules()
            if name and not any(name == f or name.startswith(f + ".") for f in frozen)}


def encoder_layer_count(model: torch.nn.Module) -> int:
    return len(encoder_of(model).layers)


def encoder_layer_names(model: torch.nn.Module, indices) -> set[str]:
    """Core-relative names of the audio encoder's layers at ``indices``."""
    encoder = module_map(model).encoder
    return {f"{encoder}.layers.{i}" for i in indices}


def stem_modules(model: torch.nn.Module | None = None) -> frozenset[str]:
    """The encoder's convolutional stem and its fixed positions (Whisper's names without a model)."""
    if model is None:
        return frozenset({"encoder.conv1", "encoder.conv2", "encoder.embed_positions"})
    return frozenset(module_map(model).stem)


def merge_strategy(model: torch.nn.Module, spec: str) -> torch.nn.Module:
    """Undo the wrapping of every strategy in ``spec``, right to left, leaving a plain Whisper model."""
    for strategy in reversed(parse_spec(spec)):
        model = strategy.merge(model)
    return model


def default_learning_rate(spec: str, family: str = "whisper") -> float:
    """The learning rate of the last strategy in the spec (the one whose parameters are added last), for the
    model family (strategies may set a family's own in ``family_lr``)."""
    last = parse_spec(spec)[-1]
    return getattr(last, "family_lr", {}).get(family, last.default_lr)


def set_trainable(model: torch.nn.Module, frozen: frozenset[str]) -> None:
    """Every parameter of the model's core trains except those inside ``frozen`` modules."""
    core = model_core(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name, parameter in core.named_parameters():
        module = name.rsplit(".", 1)[0]
        inside = any(module == f or module.startswith(f + ".") for f in frozen)
        parameter.requires_grad_(not inside)
    head = module_map(model).head
    if head and module_map(model).decoder not in frozen:  # an untied output projection trains with the LLM
        for name, parameter in model.named_parameters():
            if name == f"{head}.weight" or name.endswith(f".{head}.weight"):
                parameter.requires_grad_(True)
