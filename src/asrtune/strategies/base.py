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
           "whisper_core", "freeze_positional_embeddings"]


@dataclass(frozen=True, kw_only=True)
class Strategy:
    """One fine-tuning strategy. Subclasses are frozen dataclasses whose fields are the spec's keys."""

    name: ClassVar[str]
    default_lr: ClassVar[float]

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        """Change ``model`` in place or wrap it; return the model to train."""
        raise NotImplementedError

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

    Raises:
        AsrtuneError: unknown strategy or option, bad value, or an empty spec.
    """
    parts = [p for p in spec.split("+")]
    if not spec.strip() or any(not p.strip() for p in parts):
        raise AsrtuneError(f"empty strategy in spec {spec!r}")
    strategies = [_parse_one(p) for p in parts]
    names = [s.name for s in strategies]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise AsrtuneError(f"strategy spec {spec!r} names {', '.join(duplicated)} more than once")
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
    for strategy in parse_spec(spec):
        model = strategy.apply(model)
    freeze_positional_embeddings(model)
    return model


def merge_strategy(model: torch.nn.Module, spec: str) -> torch.nn.Module:
    """Undo the wrapping of every strategy in ``spec``, right to left, leaving a plain Whisper model."""
    for strategy in reversed(parse_spec(spec)):
        model = strategy.merge(model)
    return model


def default_learning_rate(spec: str) -> float:
    """The learning rate of the last strategy in the spec (the one whose parameters are added last)."""
    return parse_spec(spec)[-1].default_lr
