"""Training batch order: global batches as a pure function of (seed, batch number), split across ranks.

A *global batch* is what one forward pass of every process together sees. The sequence of global
batches depends on the seed, the item durations, the global batch size (``batch_size x world``) or
the duration budget, and the duration buckets, never on how many processes split it: N processes
with batch B see exactly the items one process with batch N x B sees, so with the loss normalised
over the global token count they train the same (see :mod:`asrtune.training.step`).

* Fixed size: each epoch is a seeded permutation (within duration buckets when ``n_buckets`` > 1),
  cut into global batches of ``batch_size x world`` items; a rank takes its contiguous part.
* Duration budget (``max_batch_seconds``): items are packed in epoch order until the next one would
  push the global batch past ``max_batch_seconds x world``; ranks get parts of near-equal duration.

Every item appears once per epoch; no rank is ever empty (an epoch's last global batch takes items
from the start of the epoch's order when it has fewer items than ranks). The only state is the
number of global batches consumed, so a resumed run (and a DataLoader with workers) continues
exactly: :class:`RankBatchSampler` has ``state_dict``/``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["GlobalBatches", "RankBatchSampler"]


class GlobalBatches:
    """The run's global batches.

    Args:
        durations: each item's length in seconds (buckets and the duration budget use them).
        batch_size: items per process per forward pass (fixed-size mode).
        world: number of processes.
        seed: the run's seed.
        n_buckets: duration buckets (1: one shuffled pool).
        max_batch_seconds: per-process audio seconds per forward pass (None: fixed-size batches).
    """

    def __init__(self, durations: Sequence[float], *, batch_size: int, world: int = 1, seed: int = 0,
                 n_buckets: int = 1, max_batch_seconds: float | None = None) -> None:
        if not len(durations):
            raise ValueError("no items to batch")
        if world > len(durations):
            raise ValueError(f"{len(durations)} training item(s) cannot give each of {world} processes one")
        self.durations = np.asarray(durations, dtype=np.float64)
        self.batch_size, self.world, self.seed = batch_size, world, seed
        self.n_buckets, self.max_batch_seconds = max(1, n_buckets), max_batch_seconds
        self._epochs: dict[int, list[np.ndarray]] = {}

    def _order(self, rng: np.random.Generator) -> list[np.ndarray]:
        n = len(self.durations)
        if self.n_buckets == 1:
            return [rng.permutation(n)]
        by_length = np.argsort(self.durations, kind="stable")
        buckets = [b for b in np.array_split(by_length, min(self.n_buckets, n)) if len(b)]
        return [bucket[rng.permutation(len(bucket))] for bucket in buckets]

    def _cut(self, order: np.ndarray) -> list[np.ndarray]:
        if self.max_batch_seconds is None:
            size = self.batch_size * self.world
            return [order[start:start + size] for start in range(0, len(order), size)]
        budget = self.max_batch_seconds * self.world
        batches, current, seconds = [], [], 0.0
        for item in order.tolist():
            length = float(self.durations[item])
            if len(current) >= self.world and seconds + length > budget:
                batches.append(np.asarray(current))
                current, seconds = [], 0.0
            current.append(item)
            seconds += length
        if current:
            batches.append(np.asarray(current))
        return batches

    def epoch(self, epoch: int) -> list[np.ndarray]:
        """The global batches of one epoch, in order."""
        if epoch not in self._epochs:
            rng = np.random.default_rng([self.seed, epoch])
            orders = self._order(rng)
            batches = [batch for order in orders for batch in self._cut(order)]
            if len(orders) > 1:  # bucketed: batches of all buckets in a shuffled order
                batches = [batches[i] for i in rng.permutation(len(batches))]
            everything = np.concatenate(orders)
            batches = [self._fill(batch, everything) for batch in batches]
            self._epochs = {epoch: batches}  # one epoch at a time: memory stays flat
        return self._epochs[epoch]

    def _fill(self, batch: np.ndarray, order: np.ndarray) -> np.ndarray:
        """A batch with fewer items than ranks, topped up from the start of the epoch's order."""
        if len(batch) >= self.world:
            return batch
        present, extra = set(batch.tolist()), []
        for item in order.tolist():
            if len(extra) == self.world - len(batch):
                break
            if item not in present:
                extra.append(item)
        return np.concatenate([batch, np.asarray(extra, dtype=batch.dtype)])

    def __getitem__(self, number: int) -> np.ndarray:
        """Global batch ``number``, counted from 0 across epochs."""
        epoch = 0
        while True:
            batches = self.epoch(epoch)
            if number < len(batches):
                return batches[number]
            number -= len(batches)
            epoch += 1

    def rank_part(self, batch: np.ndarray, rank: int) -> list[int]:
        """What ``rank`` of ``world`` takes from a global batch (never empty)."""
        if self.world == 1:
            return batch.tolist()
        if self.max_batch_seconds is None:
            return np.array_split(batch, self.world)[rank].tolist()
        loads, parts = [0.0] * self.world, [[] for _ in range(self.world)]
        for item in sorted(batch.tolist(), key=lambda i: (-self.durations[i], i)):  # longest first
            target = min(range(self.world), key=lambda r: (loads[r], len(parts[r]), r))
            parts[target].append(item)
            loads[target] += float(self.durations[item])
        return sorted(parts[rank])


class RankBatchSampler:
    """One rank's micro-batches, endless, from global batch ``start`` on.

    Yields lists of ``(item, draw)`` pairs: ``draw`` is the global batch number, which (with the
    seed) fixes any random augmentation of the item, so a batch reads the same whenever it is read.
    """

    def __init__(self, batches: GlobalBatches, rank: int, start: int = 0) -> None:
        self.batches, self.rank, self.next = batches, rank, start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        while True:
            number = self.next
            self.next += 1
            yield [(item, number) for item in self.batches.rank_part(self.batches[number], self.rank)]

    def state_dict(self) -> dict:
        return {"next": self.next}

    def load_state_dict(self, state: dict) -> None:
        self.next = int(state["next"])
