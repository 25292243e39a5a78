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
from asrtune.registry import Registry

__all__ = ["Strategy", "STRATEGIES", "parse_spec", "apply_strategy", "merge_strategy", "default_learning_rate",
           "whisper_core", "freeze_positional_embeddings", "qualified_modules", "encoder_layer_count",
           "stem_modules", "set_trainable"]


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

    def apply(self, model: torch.nn.Module, frozen: frozenset[str] = frozenset()) -> torch.nn.Module:
        """Change ``model`` in place or wrap it; return the model to train.

        Args:
            model: a Whisper model, possibly already changed by earlier strategies.
            frozen: qualified names (relative to ``WhisperModel``, e.g. ``encoder.layers.0``) of modules
                an earlier strategy froze whole; ``add`` strategies put nothing there.
        """
        raise NotImplementedError

    def frozen_modules(self, model: torch.nn.Module) -> frozenset[str]:
        """Modules this strategy freezes whole (``select`` strategies), relative to ``WhisperModel``."""
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


def whisper_core(model: torch.nn.Module) -> torch.nn.Module:
    """The ``WhisperModel`` (encoder + decoder) inside a possibly wrapped model."""
    for module in model.modules():
        if type(module).__name__ == "WhisperModel":
            return module
    raise AsrtuneError("strategy needs a Whisper model")


def freeze_positional_embeddings(model: torch.nn.Module) -> None:
    """Whisper's encoder positions are fixed sinusoids; transformers 5 loads them trainable. Freeze."""
    whisper_core(model).encoder.embed_positions.weight.requires_grad_(False)


def apply_strategy(model: torch.nn.Module, spec: str) -> torch.nn.Module:
    """Apply every strategy in ``spec``, left to right; the encoder positions always stay frozen."""
    frozen: frozenset[str] = frozenset()
    for strategy in parse_spec(spec):
        frozen = frozen | strategy.frozen_modules(model)
        model = strategy.apply(model, frozen)
    freeze_positional_embeddings(model)
    return model


def qualified_modules(model: torch.nn.Module, frozen: frozenset[str]) -> dict[str, torch.nn.Module]:
    """Modules of the Whisper core by name relative to it (``encoder.layers.3.self_attn.q_proj``),
    leaving out those inside a frozen module."""
    core = whisper_core(model)
    return {name: module for name, module in core.named_modules()
            if name and not any(name == f or name.startswith(f + ".") for f in frozen)}


def encoder_layer_count(model: torch.nn.Module) -> int:
    return len(whisper_core(model).encoder.layers)


def stem_modules() -> frozenset[str]:
    """The encoder's convolutional stem and its fixed positions."""
    return frozenset({"encoder.conv1", "encoder.conv2", "encoder.embed_positions"})


def merge_strategy(model: torch.nn.Module, spec: str) -> torch.nn.Module:
    """Undo the wrapping of every strategy in ``spec``, right to left, leaving a plain Whisper model."""
    for strategy in reversed(parse_spec(spec)):
        model = strategy.merge(model)
    return model


def default_learning_rate(spec: str) -> float:
    """The learning rate of the last strategy in the spec (the one whose parameters are added last)."""
    return parse_spec(spec)[-1].default_lr


def set_trainable(model: torch.nn.Module, frozen: frozenset[str]) -> None:
    """Every parameter of the Whisper core trains except those inside ``frozen`` modules."""
    core = whisper_core(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name, parameter in core.named_parameters():
        module = name.rsplit(".", 1)[0]
        inside = any(module == f or module.startswith(f + ".") for f in frozen)
        parameter.requires_grad_(not inside)
