"""What each training step is fed: log-mels, the frozen prefix's cached output, or the encoder's cut window.

:func:`encoder_plan` decides once per run, from the strategy and the loop settings: the frozen prefix is
cached (see :mod:`asrtune.training.encoder_cache`) unless augmentation changes the inputs every step, the
cache is off, or ``loop.short_input`` asks the encoder to run on each batch's cut window instead.
:class:`StepInputs` turns a collated batch into the training forward's keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from asrtune.config import RunConfig
from asrtune.data.features import FeatureDataset
from asrtune.errors import AsrtuneError
from asrtune.models.family import CachePlan
from asrtune.models.load import LoadedModel
from asrtune.models.short_input import short_input_frames
from asrtune.training.encoder_cache import PrefixCache

__all__ = ["SharedPrefix", "encoder_plan", "prefix_cache", "StepInputs"]

_LLM_INPUTS = ("input_ids", "attention_mask", "feature_attention_mask")  # LLM families' batch keys


@dataclass
class SharedPrefix:
    """A frozen-prefix cache that runs in one process hand on (lr-search trials, resumed rungs): frozen
    weights come from the base model whatever the run's seed or learning rate, so a run whose cache
    key matches reuses the outputs."""

    cache: PrefixCache | None = None


def encoder_plan(config: RunConfig, loaded: LoadedModel, say: Callable[[str], None]) -> tuple[CachePlan | None, bool]:
    """The frozen encoder prefix to cache (or None), and whether steps cut the encoder input.

    Raises:
        AsrtuneError: ``loop.short_input`` with a family whose encoder takes its full window only.
    """
    family = loaded.family
    plan = family.cache_plan(loaded.model)
    if plan is not None and config.data.augment:
        say(f"encoder prefix frozen, but data.augment={config.data.augment!r} changes its inputs every step: "
            "encoding every step instead of caching")
        plan = None
    if plan is not None and config.loop.encoder_cache_mb <= 0:
        plan = None
    if plan is not None and not plan.whole and config.loop.short_input:
        say(f"loop.short_input: the encoder runs from its stem on each batch's cut window instead of caching "
            f"{plan.layers} frozen layer(s) of the 30 s one")
        plan = None
    if not config.loop.short_input:
        return plan, False
    if not family.short_input:
        raise AsrtuneError(f"loop.short_input: the {family.display_name} audio encoder takes its full "
                           "window only; set loop.short_input to false")
    if plan is not None:
        say("loop.short_input: the whole encoder is frozen and its outputs cached, which costs less; using the "
            "cache")
        return plan, False
    return None, True


def prefix_cache(shared: SharedPrefix, config: RunConfig, loaded: LoadedModel, plan: CachePlan,
                 train_set: FeatureDataset, *, device: torch.device, precision: str, rank: int, world: int,
                 spill_root: Path) -> PrefixCache:
    """The run's prefix cache: the shared one when its key (model, plan, utterances, device, precision,
    process) is this run's, else a new one (spilling under ``spill_root/rank<N>``) that replaces it there."""
    model = loaded.model
    key = (config.model, plan, tuple(u.audio for u in train_set.utterances), str(device),
           next(model.parameters()).dtype, precision, rank, world)
    if shared.cache is not None and shared.cache.key == key:
        return shared.cache
    if shared.cache is not None:
        shared.cache.close()
    shared.cache = PrefixCache(key, loaded.family.prefix_shape(model, loaded.processor),
                               memory_mb=config.loop.encoder_cache_mb, spill_dir=spill_root / f"rank{rank}",
                               n_items=len(train_set))
    return shared.cache


class StepInputs:
    """A collated batch as the training forward's inputs, the frozen prefix from the cache where there is one.

    Args:
        model: the model being trained.
        plan: the cached frozen prefix (None: the forward starts from log-mels).
        cache: where the prefix outputs are kept (None with no plan).
        short_input: the encoder runs on each batch's cut window.
        encode_prefix: encodes the prefix of utterances the cache has not met yet.
        device: where the inputs go.
    """

    def __init__(self, model: torch.nn.Module, plan: CachePlan | None, cache: PrefixCache | None,
                 short_input: bool, encode_prefix: Callable, device: torch.device) -> None:
        self.model, self.plan, self.cache, self.short_input = model, plan, cache, short_input
        self.encode_prefix, self.device = encode_prefix, device

    def __call__(self, batch: dict) -> dict:
        device = self.device
        inputs = {"labels": batch["labels"].to(device)}
        if self.cache is not None:  # the cached prefix; the trainable layers above it run in forward
            features, indices = batch["input_features"], batch["index"].tolist()

            def encode(missing: list[int]) -> torch.Tensor:
                rows = [indices.index(i) for i in missing]
                return self.encode_prefix(self.model, features[rows].to(device), self.plan, batch["frames"][rows])

            inputs["prefix"] = self.cache.get(indices, encode).to(device)
        else:
            inputs["input_features"] = batch["input_features"].to(device)
            if self.short_input:
                inputs["short_frames"] = short_input_frames(batch["frames"], batch["input_features"].shape[-1])
        for key in _LLM_INPUTS:
            if key in batch:
                inputs[key] = batch[key].to(device)
        return inputs
