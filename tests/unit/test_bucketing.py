"""Duration-bucketed batches: every item once per epoch, similar lengths together, stateless and resumable."""

from __future__ import annotations

import numpy as np
import pytest

from asrtune.data.sampler import batch_indices, bucket_batches_per_epoch, bucketed_batch_indices

DURATIONS = list(np.random.default_rng(0).uniform(0.5, 20.0, size=53))


def _epoch(durations, size, seed, epoch, buckets):
    per_epoch = bucket_batches_per_epoch(durations, size, buckets)
    return [
        bucketed_batch_indices(durations, size, seed, epoch * per_epoch + i, buckets)
        for i in range(per_epoch)
    ]


@pytest.mark.parametrize("size, buckets", [(4, 5), (8, 3), (1, 7), (60, 2), (5, 100)])
def test_every_item_exactly_once_per_epoch(size, buckets):
    for epoch in range(3):
        batches = _epoch(DURATIONS, size, seed=11, epoch=epoch, buckets=buckets)
        flat = [i for batch in batches for i in batch]
        assert sorted(flat) == list(range(len(DURATIONS)))  # once each, none lost
        assert all(1 <= len(batch) <= size for batch in batches)


def test_batches_hold_similar_durations():
    buckets = 5
    ranked = np.argsort(DURATIONS, kind="stable")
    bucket_of = {
        int(item): b for b, members in enumerate(np.array_split(ranked, buckets)) for item in members
    }
    batches = _epoch(DURATIONS, 4, seed=3, epoch=0, buckets=buckets)
    assert all(len({bucket_of[i] for i in batch}) == 1 for batch in batches)  # one bucket per batch
    spread = np.mean([np.ptp([DURATIONS[i] for i in batch]) for batch in batches if len(batch) > 1])
    plain = np.mean(
        [np.ptp([DURATIONS[i] for i in batch_indices(len(DURATIONS), 4, 3, m)]) for m in range(13)]
    )
    assert spread < plain / 2


def test_stateless_deterministic_and_reshuffled_each_epoch():
    per_epoch = bucket_batches_per_epoch(DURATIONS, 4, 5)
    assert per_epoch == sum(-(-len(b) // 4) for b in np.array_split(np.arange(53), 5))
    first = [bucketed_batch_indices(DURATIONS, 4, 9, m, 5) for m in range(2 * per_epoch)]
    # A resumed run asks for micro-batch m directly and gets the same batch, without replaying earlier ones.
    for m in (0, 5, per_epoch, 2 * per_epoch - 1):
        assert bucketed_batch_indices(DURATIONS, 4, 9, m, 5) == first[m]
    assert first[:per_epoch] != first[per_epoch:]
    assert (
        bucketed_batch_indices(DURATIONS, 4, 10, 0, 5) != first[0]
        or bucketed_batch_indices(DURATIONS, 4, 10, 1, 5) != first[1]
    )
    assert all(isinstance(i, int) for i in first[0])


def test_edge_cases():
    assert bucketed_batch_indices([3.0], 8, 0, 5, 4) == [0]
    # Equal durations: ties are broken by index, so the buckets are still well defined.
    batches = _epoch([1.0] * 10, 3, seed=0, epoch=1, buckets=2)
    assert sorted(i for b in batches for i in b) == list(range(10))
    with pytest.raises(ValueError, match="no items"):
        bucketed_batch_indices([], 4, 0, 0, 2)
