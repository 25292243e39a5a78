"""Global batches: every item once per epoch, similar lengths together when bucketed, split across ranks
without loss or overlap, never an empty rank, and resumable from a batch number alone."""

from __future__ import annotations

import numpy as np
import pytest

from asrtune.data.sampler import GlobalBatches, RankBatchSampler

DURATIONS = list(np.random.default_rng(0).uniform(0.5, 20.0, size=53))


def _flat(batches):
    return [i for batch in batches for i in batch.tolist()]


@pytest.mark.parametrize("size, buckets", [(4, 5), (8, 3), (1, 7), (60, 2), (5, 100)])
def test_every_item_exactly_once_per_epoch(size, buckets):
    batches = GlobalBatches(DURATIONS, batch_size=size, seed=11, n_buckets=buckets)
    for epoch in range(3):
        epoch_batches = batches.epoch(epoch)
        assert sorted(_flat(epoch_batches)) == list(range(len(DURATIONS)))  # once each, none lost
        assert all(1 <= len(batch) <= size for batch in epoch_batches)


def test_fixed_size_epoch_is_cut_into_batches_of_the_global_size():
    batches = GlobalBatches([1.0] * 10, batch_size=4, seed=7)
    assert [len(b) for b in batches.epoch(0)] == [4, 4, 2]
    assert GlobalBatches([1.0] * 3, batch_size=8).epoch(0)[0].tolist() != []  # larger than the data: one batch


def test_bucketed_batches_hold_similar_durations():
    buckets = 5
    ranked = np.argsort(DURATIONS, kind="stable")
    bucket_of = {int(item): b for b, members in enumerate(np.array_split(ranked, buckets)) for item in members}
    bucketed = GlobalBatches(DURATIONS, batch_size=4, seed=3, n_buckets=buckets).epoch(0)
    assert all(len({bucket_of[i] for i in batch.tolist()}) == 1 for batch in bucketed)  # one bucket per batch
    plain = GlobalBatches(DURATIONS, batch_size=4, seed=3).epoch(0)

    def spread(batches):
        return np.mean([np.ptp([DURATIONS[i] for i in b.tolist()]) for b in batches if len(b) > 1])

    assert spread(bucketed) < spread(plain) / 2


def test_deterministic_reshuffled_each_epoch_and_by_seed():
    first = GlobalBatches(DURATIONS, batch_size=4, seed=9, n_buckets=5)
    again = GlobalBatches(DURATIONS, batch_size=4, seed=9, n_buckets=5)
    per_epoch = len(first.epoch(0))
    # A resumed run asks for batch m directly and gets the same batch, without replaying earlier ones.
    for m in (2 * per_epoch - 1, 0, 5, per_epoch):
        assert again[m].tolist() == first[m].tolist()
    assert _flat(first.epoch(0)) != _flat(first.epoch(1))
    assert _flat(GlobalBatches(DURATIONS, batch_size=4, seed=10, n_buckets=5).epoch(0)) != _flat(first.epoch(0))


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("budget", [None, 25.0])
def test_ranks_split_each_global_batch_without_loss_overlap_or_empty_parts(world, budget):
    batches = GlobalBatches(DURATIONS, batch_size=4, world=world, seed=1, max_batch_seconds=budget)
    for number in range(2 * len(batches.epoch(0))):
        batch = batches[number]
        parts = [batches.rank_part(batch, rank) for rank in range(world)]
        assert all(parts), f"global batch {number} leaves a rank empty"
        assert sorted(i for part in parts for i in part) == sorted(batch.tolist())


def test_global_batches_do_not_depend_on_how_many_processes_split_them():
    one = GlobalBatches(DURATIONS, batch_size=8, world=1, seed=4)
    two = GlobalBatches(DURATIONS, batch_size=4, world=2, seed=4)
    assert [b.tolist() for b in one.epoch(0)] == [b.tolist() for b in two.epoch(0)]


def test_duration_budget_packs_each_global_batch_under_the_budget():
    batches = GlobalBatches(DURATIONS, batch_size=1, world=2, seed=0, max_batch_seconds=30.0)
    for batch in batches.epoch(0):
        seconds = sum(DURATIONS[i] for i in batch.tolist())
        assert len(batch) >= 2  # one item per rank at least, even past the budget
        assert seconds <= 60.0 or len(batch) == 2


def test_last_batch_smaller_than_the_world_is_topped_up():
    batches = GlobalBatches([1.0] * 5, batch_size=2, world=2, seed=0)  # 4 + 1 items: the 1 needs a partner
    last = batches.epoch(0)[-1]
    assert len(last) == 2 and len(set(last.tolist())) == 2


def test_rank_sampler_resumes_from_its_state():
    batches = GlobalBatches(DURATIONS, batch_size=4, world=2, seed=2)
    sampler = RankBatchSampler(batches, rank=1)
    stream = iter(sampler)
    seen = [next(stream) for _ in range(7)]
    state = sampler.state_dict()
    following = [next(stream) for _ in range(3)]
    resumed = RankBatchSampler(batches, rank=1)
    resumed.load_state_dict(state)
    again = iter(resumed)
    assert [next(again) for _ in range(3)] == following
    assert all(draw == number for number, part in enumerate(seen) for _, draw in part)


def test_edge_cases():
    assert GlobalBatches([3.0], batch_size=8, n_buckets=4)[5].tolist() == [0]
    ties = GlobalBatches([1.0] * 10, batch_size=3, n_buckets=2)  # equal durations: ties broken by index
    assert sorted(_flat(ties.epoch(1))) == list(range(10))
    with pytest.raises(ValueError, match="no items"):
        GlobalBatches([], batch_size=4)
    with pytest.raises(ValueError, match="cannot give each"):
        GlobalBatches([1.0], batch_size=4, world=2)
