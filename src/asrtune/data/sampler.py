"""Deterministic batch order: a seeded permutation per epoch, so a resumed run sees the same batches."""

from __future__ import annotations

import numpy as np

__all__ = ["batch_indices"]


def batch_indices(n_items: int, batch_size: int, seed: int, micro_batch: int) -> list[int]:
    """The item indices of micro-batch number ``micro_batch`` (counted from 0 across epochs).

    Each epoch is a fresh permutation seeded by (seed, epoch); every item appears once per epoch;
    the last, short batch of an epoch is kept.
    """
    per_epoch = -(-n_items // batch_size)
    epoch, position = divmod(micro_batch, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n_items)
    return order[position * batch_size : (position + 1) * batch_size].tolist()
