"""A run's data: the training and eval sets (lazy features), and a stateful loader over global batches.

Batches are drawn by :class:`~asrtune.data.sampler.GlobalBatches` (every process knows every global batch; each
takes its rank's part) and read by ``(item, draw)`` keys, so augmentation is fixed by the seed and the draw and
a resumed run (``StatefulDataLoader``'s state) sees exactly the batches the uninterrupted one would.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from asrtune.config import RunConfig
from asrtune.data.augment import Augmenter
from asrtune.data.feature_cache import FeatureCache
from asrtune.data.features import FeatureDataset, collate
from asrtune.data.manifest import read_manifest
from asrtune.data.sampler import GlobalBatches
from asrtune.models.load import LoadedModel

__all__ = ["TrainingData", "training_data", "default_num_workers", "LABEL_PAD_MULTIPLE"]

LABEL_PAD_MULTIPLE = 8  # training batches' label length rounds up to this (see collate)


def default_num_workers(local_processes: int) -> int:
    """DataLoader workers per process: the cores left after one per training process, at most 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores // max(1, local_processes) - 1))


class _TrainItems(torch.utils.data.Dataset):
    """The training set read by ``(item, draw)`` keys: augmented per draw when augmentation is on."""

    def __init__(self, dataset: FeatureDataset, augmenter: Augmenter | None, augment: Callable) -> None:
        self.dataset, self.augmenter, self.augment = dataset, augmenter, augment

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, draw = key
        item = self.augment(self.dataset, index, self.augmenter, draw) if self.augmenter else self.dataset[index]
        return {**item, "labels": self.dataset.labels_for(index, draw), "draw": draw}


def _collate_training(items: list[dict]) -> dict:
    batch = collate(items, pad_to_multiple_of=LABEL_PAD_MULTIPLE)
    batch["draw"] = items[0]["draw"]
    return batch


@dataclass(frozen=True, kw_only=True)
class TrainingData:
    """The sets and the loader one process trains and evaluates with.

    Attributes:
        train_set: the training set.
        eval_set: the whole eval set (the final score); ``eval_subset`` is what evaluations during training
            score (``data.eval_limit`` rows, seeded).
        augmenter: the training-time augmentation chain (None: none).
        batches: the global batches (every process's), by number.
        loader: this process's micro-batches, resumable (``state_dict``).
        num_workers: the loader's worker processes.
    """

    train_set: FeatureDataset
    eval_set: FeatureDataset
    eval_subset: FeatureDataset
    augmenter: Augmenter | None
    batches: GlobalBatches
    loader: object
    num_workers: int


def training_data(config: RunConfig, loaded: LoadedModel, *, world: int, rank: int, pin_memory: bool,
                  batch_sampler: Callable, augment: Callable, say: Callable[[str], None]) -> TrainingData:
    """Read the run's manifests and build its loader (features are extracted lazily, batch by batch);
    ``say`` prints what the user should know of the data."""
    cache = FeatureCache.for_extractor(loaded.processor.feature_extractor) if config.data.feature_cache else None
    common = dict(processor=loaded.processor, multilingual=loaded.multilingual, language=config.language,
                  task=config.task, cache=cache)
    train_set = FeatureDataset(read_manifest(config.data.train), **common, timestamps=config.data.timestamp_share,
                               seed=config.seed)
    if config.data.timestamp_share > 0:
        timed = sum(labels is not None for labels in train_set.timestamp_labels)
        say(f"data.timestamps={config.data.timestamps}: {timed} of {len(train_set)} training rows have segments "
            "and take timestamp tokens in timestamp batches; the rest <|notimestamps|>")
    eval_set = FeatureDataset(read_manifest(config.data.eval), **common)
    limit = config.data.eval_limit
    augmenter = Augmenter.from_spec(config.data.augment, config.seed)
    batches = GlobalBatches(train_set.durations, batch_size=config.loop.batch_size, world=world, seed=config.seed,
                            n_buckets=config.data.duration_buckets, max_batch_seconds=config.loop.max_batch_seconds)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world if world > 1 else 1))
    workers = config.loop.num_workers if config.loop.num_workers is not None else default_num_workers(local)
    with warnings.catch_warnings():  # torchdata calls a deprecated torch.set_vital on construction
        warnings.simplefilter("ignore", UserWarning)
        from torchdata.stateful_dataloader import StatefulDataLoader

        loader = StatefulDataLoader(
            _TrainItems(train_set, augmenter, augment), batch_sampler=batch_sampler(batches, rank),
            num_workers=workers, prefetch_factor=2 if workers else None, collate_fn=_collate_training,
            pin_memory=pin_memory,
            # its own generator: starting an iterator then draws nothing from the global RNG, which a
            # resumed run restores (LoRA dropout draws from it)
            generator=torch.Generator().manual_seed(config.seed))
    return TrainingData(train_set=train_set, eval_set=eval_set,
                        eval_subset=eval_set.sample(limit, config.seed) if limit else eval_set,
                        augmenter=augmenter, batches=batches, loader=loader, num_workers=workers)
