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

What is frozen, the cached shape and the encoding are the model family's (``ModelFamily.cache_plan``,
``prefix_shape``, ``encode_prefix``); this module stores the outputs.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["PrefixCache"]


class PrefixCache:
    """Prefix outputs by item index: in memory up to ``memory_mb``, then in a memory-mapped file.

    Items may differ in length (a family that caches only each utterance's valid positions): each is kept as
    long as it is, and a batch comes back padded with zeros to its longest item.

    Args:
        key: what the outputs depend on (model, plan, utterances, device, precision); a run may reuse
            a cache whose key equals its own (lr-search trials do).
        shape: the longest item's shape (positions, width).
        memory_mb: outputs kept in memory up to this many MB.
        spill_dir: where the memory-mapped file goes once memory is full (None: never spill).
        n_items: the corpus size (the file is sized for it, sparse: disk is used as items are written).

    Items beyond both (the file is capped at half the free disk) are encoded every time they are met;
    ``stats()`` counts them.
    """

    def __init__(self, key: tuple, shape: tuple[int, int], *, memory_mb: float, spill_dir: Path | None,
                 n_items: int) -> None:
        self.key, self.shape = key, tuple(shape)
        self._row_bytes = int(self.shape[1]) * 4
        self._memory_budget = int(memory_mb * 2**20)
        self._memory_bytes = 0
        self._memory: dict[int, torch.Tensor] = {}
        self._spill_dir, self._n_items = spill_dir, n_items
        self._file: np.memmap | None = None
        self._file_rows: dict[int, tuple[int, int]] = {}  # item -> (first row, rows)
        self._file_used = self._file_capacity = 0
        self.hits = self.misses = self.uncached = 0

    def _open_file(self) -> None:
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self._spill_dir).free
        self._file_capacity = int(min(self._n_items * self.shape[0], free // 2 // self._row_bytes))
        if self._file_capacity:
            path = self._spill_dir / f"prefix-{abs(hash(self.key)):x}.f32"
            self._file = np.memmap(path, dtype=np.float32, mode="w+", shape=(self._file_capacity, self.shape[1]))

    def _lookup(self, item: int) -> torch.Tensor | None:
        if item in self._memory:
            return self._memory[item]
        if item in self._file_rows:
            first, rows = self._file_rows[item]
            return torch.from_numpy(np.array(self._file[first: first + rows]))
        return None

    def _store(self, item: int, output: torch.Tensor) -> None:
        size = output.shape[0] * self._row_bytes
        if self._memory_bytes + size <= self._memory_budget:
            self._memory[item] = output.clone()
            self._memory_bytes += size
            return
        if self._spill_dir is None:
            self.uncached += 1
            return
        if self._file is None and not self._file_capacity:
            self._open_file()
        if self._file_used + output.shape[0] <= self._file_capacity:
            self._file[self._file_used: self._file_used + output.shape[0]] = output.numpy()
            self._file_rows[item] = (self._file_used, output.shape[0])
            self._file_used += output.shape[0]
        else:
            self.uncached += 1

    def get(self, items: Sequence[int],
            compute: Callable[[list[int]], torch.Tensor | list[torch.Tensor]]) -> torch.Tensor:
        """Outputs (B, positions, width) float32 on CPU for ``items``, padded with zeros to the longest;
        ``compute`` encodes the ones not cached yet (a batch tensor, or one tensor per item)."""
        found = {item: self._lookup(item) for item in items}
        missing = [item for item, output in found.items() if output is None]
        self.hits += len(items) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = compute(missing)
            rows = computed.unbind(0) if isinstance(computed, torch.Tensor) else computed
            for item, output in zip(missing, rows, strict=True):
                output = output.to("cpu", torch.float32)
                found[item] = output
                self._store(item, output)
        return torch.nn.utils.rnn.pad_sequence([found[item] for item in items], batch_first=True)

    def stats(self) -> dict:
        return {"in_memory": len(self._memory), "on_disk": len(self._file_rows), "not_cached": self.uncached,
                "hits": self.hits, "encoded": self.misses,
                "disk_mb": round(self._file_used * self._row_bytes / 2**20, 1)}

    def close(self) -> None:
        """Free the memory and delete the spill file."""
        self._memory.clear()
        self._memory_bytes = 0
        if self._file is not None:
            path = Path(self._file.filename)
            del self._file
            self._file = None
            path.unlink(missing_ok=True)
        self._file_rows.clear()
        self._file_used = 0
