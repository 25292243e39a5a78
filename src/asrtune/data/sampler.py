"""Deterministic batch order: batch ``m`` is a pure function of (seed, m); resumed runs see the same batches.

Two orders, both stateless (no sampler state to save or restore):

* :func:`batch_indices`: a seeded permutation per epoch, cut into batches.
* :func:`bucketed_batch_indices`: items sorted by duration into equal-sized buckets; each bucket
  shuffled and cut into batches, and the batches of all buckets shuffled. Batches then hold
  utterances of similar length (less label padding, and for models that accept short inputs, less
  audio padding), and every item still appears exactly once per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["batch_indices", "bucketed_batch_indices", "bucket_batches_per_epoch"]


def batch_indices(n_items: int, batch_size: int, seed: int, micro_batch: int) -> list[int]:
    """The item indices of micro-batch number ``micro_batch`` (counted from 0 across epochs).

    Each epoch is a fresh permutation seeded by (seed, epoch); every item appears once per epoch;
    the last, short batch of an epoch is kept.
    """
    per_epoch = -(-n_items // batch_size)
    epoch, position = divmod(micro_batch, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n_items)
    return order[position * batch_size : (position + 1) * batch_size].tolist()


def _buckets(durations: Sequence[float], n_buckets: int) -> list[np.ndarray]:
    """Item indices sorted by duration (ties by index) and split into ``n_buckets`` near-equal runs."""
    order = np.argsort(np.asarray(durations, dtype=np.float64), kind="stable")
    return [bucket for bucket in np.array_split(order, min(n_buckets, len(order))) if len(bucket)]


def bucket_batches_per_epoch(durations: Sequence[float], batch_size: int, n_buckets: int) -> int:
    """Batches in one epoch of :func:`bucketed_batch_indices` (each bucket may end in a short batch)."""
    return sum(-(-len(bucket) // batch_size) for bucket in _buckets(durations, n_buckets))


def bucketed_batch_indices(
    durations: Sequence[float], batch_size: int, seed: int, micro_batch: int, n_buckets: int
) -> list[int]:
    """The item indices of micro-batch ``micro_batch`` when batches are drawn from duration buckets.

    Args:
        durations: each item's length (seconds); only their order matters.
        batch_size: items per batch (a bucket's last batch may be shorter).
        seed: the run's seed.
        micro_batch: batch number, counted from 0 across epochs.
        n_buckets: how many duration buckets (clamped to the number of items).

    Returns:
        Item indices, all from one bucket.
    """
    if not len(durations):
        raise ValueError("no items to batch")
    buckets = _buckets(durations, n_buckets)
    per_epoch = sum(-(-len(bucket) // batch_size) for bucket in buckets)
    epoch, position = divmod(micro_batch, per_epoch)
    rng = np.random.default_rng([seed, epoch, 1])  # the trailing 1 keeps it apart from batch_indices' stream
    batches = []
    for bucket in buckets:
        shuffled = bucket[rng.permutation(len(bucket))]
        batches.extend(shuffled[start : start + batch_size] for start in range(0, len(shuffled), batch_size))
    return batches[int(rng.permutation(per_epoch)[position])].tolist()
