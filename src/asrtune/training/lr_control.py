"""Learning-rate control beyond the fixed schedule: per-component groups (Whisper: encoder / decoder;
LLM families: audio_encoder / projector / llm, Marco-ASR's per-component control), WER-driven reductions,
and the overfitting watch (seed 003: the LR, chosen and adjusted by measured WER, decides whether
fine-tuning helps; small domain sets overfit)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.optim.lr_scheduler import LambdaLR

from asrtune.models.family import family_of, model_core

__all__ = ["parameter_groups", "WerPlateau", "OverfitWatch", "warmup_schedule"]


def parameter_groups(model: torch.nn.Module, learning_rate: float, encoder_learning_rate: float | None,
                     projector_learning_rate: float | None = None) -> list[dict]:
    """AdamW groups of the trainable parameters, each component with its own peak LR.

    Whisper: ``encoder`` (``encoder_learning_rate`` when given) and ``decoder`` (everything else).
    LLM families: ``audio_encoder`` (``encoder_learning_rate``), ``projector``
    (``projector_learning_rate``) and ``llm`` (everything else: the LLM, its head). A group whose own
    LR is None takes ``learning_rate``. Strategy-added modules (LoRA, adapters) go with the component
    they sit in. Empty groups are left out.
    """
    family = family_of(model)
    core = model_core(model)
    encoder_ids = {id(p) for p in core.get_submodule(family.modules.encoder).parameters()}
    projector = family.modules.projector
    projector_ids = {id(p) for p in core.get_submodule(projector).parameters()} if projector else set()
    names = ("encoder", None, "decoder") if projector is None else ("audio_encoder", "projector", "llm")
    rates = (encoder_learning_rate or learning_rate, projector_learning_rate or learning_rate, learning_rate)
    members: list[list[torch.nn.Parameter]] = [[], [], []]
    for parameter in model.parameters():
        if parameter.requires_grad:
            slot = 0 if id(parameter) in encoder_ids else 1 if id(parameter) in projector_ids else 2
            members[slot].append(parameter)
    return [{"params": params, "lr": rate, "name": name}
            for params, rate, name in zip(members, rates, names, strict=True) if params]


@dataclass
class WerPlateau:
    """Multiply the LR by ``factor`` when eval WER has not improved for ``patience`` evaluations.

    ``scale`` multiplies the warm-up/decay schedule; it never drops below ``floor`` (the smallest
    multiplier, from ``min_learning_rate / learning_rate``).
    """

    factor: float | None
    patience: int = 1
    floor: float = 0.0
    scale: float = 1.0
    best: float = float("inf")
    bad_evals: int = 0
    changes: list[dict] = field(default_factory=list)

    def observe(self, step: int, wer: float) -> dict | None:
        """Record an evaluation; returns the change made (with its reason), if any."""
        if wer < self.best:
            self.best, self.bad_evals = wer, 0
            return None
        self.bad_evals += 1
        if self.factor is None or self.bad_evals < self.patience or self.scale <= self.floor:
            return None
        previous = self.scale
        self.scale = max(self.scale * self.factor, self.floor)
        reason = (f"eval WER {wer:.4f} {'worse than' if wer > self.best else 'no better than'} the best "
                  f"{self.best:.4f} for {self.bad_evals} evaluation(s)")
        self.bad_evals = 0
        change = {"step": step, "scale_from": previous, "scale_to": self.scale, "reason": reason}
        self.changes.append(change)
        return change

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad_evals": self.bad_evals, "changes": list(self.changes)}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.bad_evals = state["scale"], state["best"], state["bad_evals"]
        self.changes = list(state["changes"])


@dataclass
class OverfitWatch:
    """Warn when training loss keeps falling while eval WER rises, ``evals`` evaluations running."""

    evals: int = 2
    history: list[tuple[float, float]] = field(default_factory=list)
    warned: bool = False

    def observe(self, mean_train_loss: float | None, wer: float) -> str | None:
        if mean_train_loss is None:
            return None
        self.history.append((mean_train_loss, wer))
        recent = self.history[-(self.evals + 1):]
        if self.warned or len(recent) < self.evals + 1:
            return None
        losses, wers = zip(*recent)
        falling = all(b < a for a, b in zip(losses, losses[1:]))
        rising = all(b > a for a, b in zip(wers, wers[1:]))
        if falling and rising:
            self.warned = True
            return (f"overfitting: training loss fell {losses[0]:.3f} -> {losses[-1]:.3f} while eval WER rose "
                    f"{wers[0]:.4f} -> {wers[-1]:.4f} over {self.evals} evaluations; the lowest-WER checkpoint "
                    "is kept, consider fewer steps, a lower LR or more data")
        return None

    def state_dict(self) -> dict:
        return {"history": [list(pair) for pair in self.history], "warned": self.warned}

    def load_state_dict(self, state: dict) -> None:
        self.history = [tuple(pair) for pair in state["history"]]
        self.warned = bool(state["warned"])


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int, plateau: WerPlateau,
                    decay: bool = True) -> LambdaLR:
    """Linear warm-up to each group's LR, then linear decay to 0 at ``total`` (or constant when
    ``decay`` is False, as lr-search trials that resume to more steps need), times ``plateau.scale``."""

    def factor(step: int) -> float:
        if step < warmup:
            shape = step / max(1, warmup)
        elif decay:
            shape = max(0.0, (total - step) / max(1, total - warmup))
        else:
            shape = 1.0
        return shape * plateau.scale

    return LambdaLR(optimizer, factor)
