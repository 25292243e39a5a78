"""Does the model use the audio? The teacher-forced loss with each clip's own audio, another clip's, silence.

A model that transcribes from what it hears scores its reference far better with the clip's own audio than
with another clip's (cut or padded with silence to the same length, so the prompt is unchanged) or with
silence; a model that only writes fluent text in the domain's register scores all three alike. The gaps are
per-token losses (nats), paired by utterance, with a bootstrap interval over utterances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from asrtune.data.audio import SAMPLE_RATE, load_audio
from asrtune.data.features import FeatureDataset, collate
from asrtune.evaluation.bootstrap import bootstrap_ratio
from asrtune.models.load import LoadedModel

__all__ = ["AudioUse", "audio_use", "CONDITIONS"]

CONDITIONS = ("own", "shuffled", "silence")


@dataclass(frozen=True)
class AudioUse:
    """Per-token losses under each condition and the gaps to the clips' own audio.

    Attributes:
        utterances, tokens: how many were scored.
        loss: mean per-token loss by condition (``own``, ``shuffled``, ``silence``).
        gap: ``loss[c] - loss["own"]`` for the other conditions, with its 95% interval ``(low, high)``.
    """

    utterances: int
    tokens: int
    loss: dict[str, float]
    gap: dict[str, tuple[float, tuple[float, float] | None]]

    @property
    def uses_audio(self) -> bool:
        """Both intervals lie above 0: another clip's audio and silence both make the reference less likely."""
        return all(interval is not None and interval[0] > 0 for _, interval in self.gap.values())

    def as_dict(self) -> dict:
        return {"utterances": self.utterances, "tokens": self.tokens, "loss": self.loss,
                "gap": {name: {"mean": mean, "ci95": list(interval) if interval else None}
                        for name, (mean, interval) in self.gap.items()}}


def _features(dataset: FeatureDataset, samples: np.ndarray) -> torch.Tensor:
    extractor = dataset.processor.feature_extractor
    features = extractor(samples, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
    return torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))


def _fitted(samples: np.ndarray, length: int) -> np.ndarray:
    """``samples`` cut, or padded with silence, to ``length``."""
    return samples[:length] if len(samples) >= length else np.pad(samples, (0, length - len(samples)))


@torch.no_grad()
def _loss(loaded: LoadedModel, item: dict) -> float:
    batch = collate([item], pad_to_multiple_of=8)
    inputs = {key: value for key, value in batch.items() if key not in ("index", "frames")}
    loss, _ = loaded.family.loss(loaded.model, inputs)
    return float(loss)


def audio_use(loaded: LoadedModel, dataset: FeatureDataset, *, seed: int = 0, resamples: int = 1000,
              progress: bool = True) -> AudioUse:
    """Score every utterance of ``dataset`` with its own audio, with another's (a fixed derangement drawn from
    ``seed``) and with silence."""
    model = loaded.model
    was_training = model.training
    model.eval()
    n = len(dataset)
    order = np.random.default_rng(seed).permutation(n)
    other = {int(order[i]): int(order[(i + 1) % n]) for i in range(n)}  # a derangement when n > 1
    sums = {name: np.zeros(n) for name in CONDITIONS}
    tokens = np.array([dataset.target_tokens(i) for i in range(n)], dtype=float)
    for i in tqdm(range(n), desc="audio use", unit="utt", disable=not progress):
        item = dataset[i]
        length = len(load_audio(dataset.utterances[i].audio))
        sums["own"][i] = _loss(loaded, item)
        shuffled = _fitted(load_audio(dataset.utterances[other[i]].audio), length)
        sums["shuffled"][i] = _loss(loaded, {**item, "input_features": _features(dataset, shuffled)})
        sums["silence"][i] = _loss(loaded, {**item, "input_features": _features(dataset, np.zeros(length,
                                                                                          np.float32))})
    model.train(was_training)
    total = tokens.sum()
    gap = {}
    for name in CONDITIONS[1:]:
        difference = sums[name] - sums["own"]
        gap[name] = (float(difference.sum() / total),
                     bootstrap_ratio(difference, tokens, resamples=resamples, seed=seed))
    return AudioUse(utterances=n, tokens=int(total), loss={k: float(v.sum() / total) for k, v in sums.items()},
                    gap=gap)
