"""Frozen-prefix activation cache: encode once what cannot change, train from there up.

When the encoder's stem (conv1, conv2, positions) and its bottom k layers hold nothing trainable and
apply no dropout, their output for an utterance is the same at every step. The recipe computes it
the first time a process meets the utterance (no pass over the corpus before step 1) and each step
runs only the encoder layers above k (and the final layer norm), then the decoder. With the whole
encoder frozen (``decoder``, ``decoder+lora``), the cached tensor is the encoder output itself and a
step is a decoder pass. Each process caches the utterances it trains on; outputs stay in memory up
to ``loop.encoder_cache_mb`` and spill to a memory-mapped file beyond it.

Exact, not an approximation: loss and gradients equal the uncached path (tested). Augmentation that
changes the inputs every step disables it (the recipe checks).

LLM families (Qwen2-Audio): when the whole audio encoder is frozen (``projector``, ``lora``,
``projector+lora``), the cached tensor is the audio tower's output before the projector, and a step
runs the projector and the LLM only. A partly trained audio encoder is not cached there.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asrtune.models.family import family_of, model_core
from asrtune.models.short_input import encoder_stem
from asrtune.strategies.base import whisper_core

__all__ = ["CachePlan", "cache_plan", "encoder_is_frozen", "item_bytes", "encode_prefix",
           "encode_top", "PrefixCache", "prefix_shape"]


@dataclass(frozen=True)
class CachePlan:
    """What is cached: the stem plus ``layers`` encoder layers; ``whole`` adds the final layer norm."""

    layers: int
    whole: bool


def _trains(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _audio_encoder_plan(model: torch.nn.Module) -> CachePlan | None:
    """LLM families: the whole audio encoder when nothing in it trains and it applies no dropout."""
    family = family_of(model)
    encoder = model_core(model).get_submodule(family.modules.encoder)
    config = encoder.config
    if any(getattr(config, name, 0) for name in ("dropout", "attention_dropout", "activation_dropout",
                                                  "encoder_layerdrop")):
        return None
    if _trains(encoder):
        return None
    return CachePlan(layers=len(encoder.layers), whole=True)


def prefix_shape(model: torch.nn.Module, processor=None) -> tuple[int, int]:
    """One cached item's shape (positions, width): Whisper's encoder positions, or the audio tower's
    output positions for the processor's full window (LLM families)."""
    family = family_of(model)
    if family.name == "whisper":
        config = whisper_core(model).config
        return config.max_source_positions, config.d_model
    return family.prefix_shape(model, processor)


def cache_plan(model: torch.nn.Module) -> CachePlan | None:
    """The largest frozen prefix of the encoder, or None when the stem trains or dropout is on."""
    if family_of(model).name != "whisper":
        return _audio_encoder_plan(model)
    core = whisper_core(model)
    encoder, config = core.encoder, core.config
    if config.dropout or config.attention_dropout or config.activation_dropout or config.encoder_layerdrop:
        return None
    if _trains(encoder.conv1) or _trains(encoder.conv2) or _trains(encoder.embed_positions):
        return None
    layers = 0
    for layer in encoder.layers:
        if _trains(layer):
            break
        layers += 1
    return CachePlan(layers=layers, whole=layers == len(encoder.layers) and not _trains(encoder.layer_norm))


def encoder_is_frozen(model: torch.nn.Module) -> bool:
    """True when no encoder parameter trains and the encoder applies no dropout."""
    plan = cache_plan(model)
    return plan is not None and plan.whole


def item_bytes(model: torch.nn.Module) -> int:
    """Memory one cached utterance takes: (max_source_positions, d_model) float32."""
    config = whisper_core(model).config
    return config.max_source_positions * config.d_model * 4


@torch.no_grad()
def encode_prefix(model: torch.nn.Module, features: torch.Tensor, plan: CachePlan,
                  frames: torch.Tensor | None = None) -> torch.Tensor:
    """The cached prefix's output (B, max_source_positions, d_model) for log-mels (B, n_mels, frames).

    LLM families: the audio tower's output, each row's padding masked by its valid ``frames`` (B,).
    """
    family = family_of(model)
    if family.name != "whisper":
        tower = model_core(model).get_submodule(family.modules.encoder)
        was_training = tower.training
        tower.eval()
        output = family.encode_audio(model, features.to(dtype=next(tower.parameters()).dtype), frames)
        tower.train(was_training)
        return output
    encoder = whisper_core(model).encoder
    was_training = encoder.training
    encoder.eval()
    features = features.to(dtype=next(encoder.parameters()).dtype)
    if plan.whole:
        hidden = encoder(features).last_hidden_state
    else:
        hidden = encoder_stem(encoder, features)
        for layer in encoder.layers[: plan.layers]:
            hidden = layer(hidden, None)
    encoder.train(was_training)
    return hidden


def encode_top(model: torch.nn.Module, prefix: torch.Tensor, plan: CachePlan) -> torch.Tensor:
    """The encoder output from a cached prefix: the layers above it and the final layer norm.

    Shapes: (B, positions, d_model) -> (B, positions, d_model). Gradients flow as usual.
    """
    if plan.whole:
        return prefix
    encoder = whisper_core(model).encoder
    hidden = prefix
    for layer in encoder.layers[plan.layers :]:
        hidden = layer(hidden, None)
    return encoder.layer_norm(hidden)


class PrefixCache:
    """Prefix outputs by item index: in memory up to ``memory_mb``, then in a memory-mapped file.

    Args:
        key: what the outputs depend on (model, plan, utterances, device, precision); a run may reuse
            a cache whose key equals its own (lr-search trials do).
        shape: one item's output shape (positions, d_model).
        memory_mb: outputs kept in memory up to this many MB.
        spill_dir: where the memory-mapped file goes once memory is full (None: never spill).
        n_items: the corpus size (the file is sized for it, sparse: disk is used as items are written).

    Items beyond both (the file is capped at half the free disk) are encoded every time they are met;
    ``stats()`` counts them.
    """

    def __init__(self, key: tuple, shape: tuple[int, int], *, memory_mb: float, spill_dir: Path | None,
                 n_items: int) -> None:
        self.key, self.shape = key, tuple(shape)
        self._item_bytes = int(np.prod(self.shape)) * 4
        self._memory_slots = int(memory_mb * 2**20 // self._item_bytes)
        self._memory: dict[int, torch.Tensor] = {}
        self._spill_dir, self._n_items = spill_dir, n_items
        self._file: np.memmap | None = None
        self._file_slots: dict[int, int] = {}
        self._file_capacity = 0
        self.hits = self.misses = self.uncached = 0

    def _open_file(self) -> None:
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self._spill_dir).free
        self._file_capacity = int(min(self._n_items, free // 2 // self._item_bytes))
        if self._file_capacity:
            path = self._spill_dir / f"prefix-{abs(hash(self.key)):x}.f32"
            self._file = np.memmap(path, dtype=np.float32, mode="w+", shape=(self._file_capacity, *self.shape))

    def _lookup(self, item: int) -> torch.Tensor | None:
        if item in self._memory:
            return self._memory[item]
        if item in self._file_slots:
            return torch.from_numpy(np.array(self._file[self._file_slots[item]]))
        return None

    def _store(self, item: int, output: torch.Tensor) -> None:
        if len(self._memory) < self._memory_slots:
            self._memory[item] = output.clone()
            return
        if self._spill_dir is None:
            self.uncached += 1
            return
        if self._file is None and not self._file_capacity:
            self._open_file()
        if len(self._file_slots) < self._file_capacity:
            slot = len(self._file_slots)
            self._file[slot] = output.numpy()
            self._file_slots[item] = slot
        else:
            self.uncached += 1

    def get(self, items: Sequence[int], compute: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
        """Outputs (B, *shape) float32 on CPU for ``items``; ``compute`` encodes the ones not cached yet."""
        found = {item: self._lookup(item) for item in items}
        missing = [item for item, output in found.items() if output is None]
        self.hits += len(items) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = compute(missing).to("cpu", torch.float32)
            for item, output in zip(missing, computed.unbind(0), strict=True):
                found[item] = output
                self._store(item, output)
        return torch.stack([found[item] for item in items])

    def stats(self) -> dict:
        return {"in_memory": len(self._memory), "on_disk": len(self._file_slots), "not_cached": self.uncached,
                "hits": self.hits, "encoded": self.misses,
                "disk_mb": round(len(self._file_slots) * self._item_bytes / 2**20, 1)}

    def close(self) -> None:
        """Free the memory and delete the spill file."""
        self._memory.clear()
        if self._file is not None:
            path = Path(self._file.filename)
            del self._file
            self._file = None
            path.unlink(missing_ok=True)
        self._file_slots.clear()
