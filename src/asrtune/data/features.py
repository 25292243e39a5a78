"""Log-mel features and label ids, read lazily: nothing is held per utterance but its row,
its label ids and its duration.

Features are computed when an item is read (from the on-disk feature cache when it holds them), so
memory does not grow with the corpus and training starts without a pass over it. Durations come from
the manifest's ``duration`` field, else from the audio file's header (no decoding).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import soundfile as sf
import torch
from transformers import WhisperProcessor

from asrtune.data.audio import SAMPLE_RATE
from asrtune.data.feature_cache import FeatureCache, extract_features
from asrtune.data.manifest import Utterance
from asrtune.errors import AsrtuneError
from asrtune.models.family import family_for_processor, family_named
from asrtune.models.whisper import DECODER_POSITIONS, prefix_ids

__all__ = ["prefix_ids", "label_ids", "FeatureDataset", "MAX_LABEL_TOKENS", "collate", "audio_duration"]

MAX_LABEL_TOKENS = DECODER_POSITIONS  # Whisper's (each family has its own: ``family.max_label_tokens``)


def label_ids(processor: WhisperProcessor, text: str, prefix: list[int]) -> list[int]:
    """Training targets: prefix, the text (with Whisper's leading space), end-of-text.

    ``<|startoftranscript|>`` is left out: the model prepends it when shifting labels right.
    """
    tokenizer = processor.tokenizer
    text_ids = tokenizer.encode(" " + text.strip(), add_special_tokens=False)
    return prefix + text_ids + [tokenizer.eos_token_id]


def audio_duration(utterance: Utterance) -> float:
    """Seconds of audio: the manifest's ``duration`` when it has one, else the file header's (no decoding).

    Raises:
        AsrtuneError: the file is missing or not audio libsndfile reads.
    """
    if utterance.duration is not None:
        return float(utterance.duration)
    if not os.path.isfile(utterance.audio):
        raise AsrtuneError(f"{utterance.id}: audio file not found: {utterance.audio}")
    try:
        info = sf.info(utterance.audio)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AsrtuneError(f"{utterance.id}: cannot read the audio header of {utterance.audio}: {error}") from error
    return info.frames / info.samplerate


class _LazyFeatures(Sequence):
    """``dataset.features[i]``: the (n_mels, 3000) log-mel of item ``i``, computed (or read) on access."""

    def __init__(self, dataset: FeatureDataset) -> None:
        self._dataset = dataset

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._dataset.item_features(index)


class FeatureDataset(torch.utils.data.Dataset):
    """Utterances with their label ids; log-mel features (n_mels, 3000) computed when an item is read.

    Args:
        utterances: the rows.
        processor: the model's processor (its feature extractor fixes n_mels).
        multilingual: whether the model takes language and task tokens.
        language: default language for rows without one.
        task: transcribe or translate.
        cache: an on-disk feature cache to read from and fill (None: always extract).
        timestamps: the share of training batches (by their number, ``draw``) whose rows with segments take
            labels with timestamp tokens (:meth:`labels_for`); 0: none.
        seed: the run's seed (which batches are timestamp batches).

    Attributes:
        durations: each utterance's audio length in seconds (manifest ``duration`` or audio header).
        valid_frames: each utterance's log-mel frames before the 30 s padding (for a shorter encoder input).
        labels: each utterance's label ids (int32 arrays).
        features: a lazy sequence: ``features[i]`` computes item ``i``'s log-mel.

    Raises:
        AsrtuneError: a transcript longer than the decoder holds, or unreadable audio headers.
    """

    def __init__(self, utterances: Sequence[Utterance], processor: WhisperProcessor, *, multilingual: bool,
                 language: str | None = None, task: str = "transcribe", progress: bool = True,
                 desc: str = "features", cache: FeatureCache | None = None, timestamps: float = 0.0,
                 seed: int = 0) -> None:
        del progress, desc  # nothing is computed up front any more; kept for callers' signatures
        self.utterances = list(utterances)
        self.timestamps, self.seed = float(timestamps), seed
        self.processor = processor
        self.cache = cache
        self.family = family_for_processor(processor)
        extractor = processor.feature_extractor
        self.durations = np.array([audio_duration(u) for u in self.utterances], dtype=np.float64)
        max_frames = extractor.n_samples // extractor.hop_length
        min_samples = getattr(extractor, "min_length", 0) or 0  # Qwen3-ASR zero-pads short clips to 0.5 s first
        self.valid_frames = [min(-(-max(int(round(d * SAMPLE_RATE)), min_samples) // extractor.hop_length), max_frames)
                             for d in self.durations]
        self.labels = self._label_ids(processor, multilingual=multilingual, language=language, task=task)
        self.timestamp_labels: list[np.ndarray | None] = [None] * len(self.utterances)
        if self.timestamps > 0:
            self.timestamp_labels = self.family.timestamp_sequences(
                processor, [u.segments for u in self.utterances], [u.id for u in self.utterances],
                [u.language or language for u in self.utterances], self.durations.tolist(), multilingual=multilingual,
                task=task)
        self.features = _LazyFeatures(self)

    def _label_ids(self, processor, *, multilingual: bool, language: str | None, task: str) -> list[np.ndarray]:
        """Each utterance's token ids from the model family (``self.prompt_lengths``: their prompt part)."""
        utterances = self.utterances
        labels, self.prompt_lengths = self.family.sequences(
            processor, [u.text for u in utterances], [u.id for u in utterances],
            [u.language or language for u in utterances], self.valid_frames, multilingual=multilingual, task=task)
        return labels

    def timestamp_batch(self, draw: int) -> bool:
        """Whether global batch ``draw`` trains with timestamp tokens (a seeded draw at the set share)."""
        if self.timestamps <= 0:
            return False
        return self.timestamps >= 1 or bool(np.random.default_rng([self.seed, draw, 29]).random() < self.timestamps)

    def labels_for(self, index: int, draw: int | None = None) -> np.ndarray:
        """Item ``index``'s labels in training batch ``draw``: with timestamp tokens when it is a timestamp
        batch and the item has segments, else the plain ones (None: the plain ones)."""
        timed = self.timestamp_labels[index]
        if draw is not None and timed is not None and self.timestamp_batch(draw):
            return timed
        return self.labels[index]

    def target_tokens(self, index: int, draw: int | None = None) -> int:
        """Tokens of item ``index`` that count in the loss (all but the prompt), in training batch ``draw``."""
        return len(self.labels_for(index, draw)) - self.prompt_lengths[index]

    def item_features(self, index: int) -> torch.Tensor:
        """Item ``index``'s log-mel features (n_mels, frames), float32."""
        features, _ = extract_features(self.utterances[index].audio, self.processor.feature_extractor, self.cache)
        return torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))

    def subset(self, indices: Sequence[int]) -> FeatureDataset:
        """The utterances at ``indices``, in that order (features still computed on access)."""
        subset = object.__new__(type(self))
        subset.processor, subset.cache, subset.family = self.processor, self.cache, self.family
        subset.utterances = [self.utterances[i] for i in indices]
        subset.durations = self.durations[list(indices)] if len(indices) else self.durations[:0]
        subset.valid_frames = [self.valid_frames[i] for i in indices]
        subset.labels = [self.labels[i] for i in indices]
        subset.timestamp_labels = [self.timestamp_labels[i] for i in indices]
        subset.timestamps, subset.seed = self.timestamps, self.seed
        subset.prompt_lengths = [self.prompt_lengths[i] for i in indices]
        subset.features = _LazyFeatures(subset)
        return subset

    def head(self, count: int) -> FeatureDataset:
        """The first ``count`` utterances."""
        return self.subset(range(min(count, len(self))))

    def sample(self, count: int, seed: int) -> FeatureDataset:
        """A seeded random subset of ``count`` utterances (all when ``count`` >= the size), in corpus order."""
        if count >= len(self):
            return self
        chosen = np.sort(np.random.default_rng([seed, 17]).choice(len(self), size=count, replace=False))
        return self.subset(chosen.tolist())

    def shard(self, rank: int, world: int) -> FeatureDataset:
        """Every ``world``-th utterance from ``rank`` (distributed evaluation)."""
        return self.subset(range(rank, len(self), world))

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict:
        item = {"input_features": self.item_features(index), "labels": self.labels[index], "index": index,
                "frames": self.valid_frames[index]}
        if self.prompt_lengths[index]:  # LLM families: the prompt part of ``labels`` is masked in the loss
            item["prompt_length"], item["family"] = self.prompt_lengths[index], self.family.name
        return item


def collate(items: list[dict], pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Stack features (B, n_mels, frames); pad labels (B, L) with -100, which the loss ignores.

    ``pad_to_multiple_of`` rounds L up (as transformers' collators do): the decoder then sees a few
    batch shapes instead of one per label length, and each new shape costs kernel selection (oneDNN
    builds its bf16/AMX kernels per shape). Exact: the loss ignores -100 and the decoder is causal,
    so the extra positions change no real position. ``frames`` (B,) holds each item's log-mel frames
    before the padding. Items of LLM families (they carry ``prompt_length``) collate through their
    family (input ids, attention mask, labels with the prompt masked).
    """
    name = items[0]["family"] if "prompt_length" in items[0] else "whisper"
    return family_named(name).collate(items, pad_to_multiple_of, None)
