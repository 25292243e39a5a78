"""Training-time augmentation: registered, written as a spec in the run config, deterministic under a seed.

A spec is ``name:key=value,...`` joined by ``+``, e.g.
``speed+noise:min_snr_db=5,max_snr_db=20+gain+specaugment:time_masks=2``. Waveform augmentations
run in the order given, on 16 kHz mono audio, before feature extraction; feature augmentations
(SpecAugment) run after it, on the log-mel features (n_mels, frames).

Determinism: every draw comes from a generator seeded by (run seed, micro-batch number, item
index, position in the chain), so batch ``m`` of a resumed run is augmented exactly as in an
uninterrupted one. audiomentations draws from Python's and NumPy's global generators; those are
seeded from the same generator for the call and restored afterwards, so nothing else in the
program sees its random stream move.
"""

from __future__ import annotations

import dataclasses
import random
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
import soxr
import torch

from asrtune.data.audio import SAMPLE_RATE, load_audio
from asrtune.errors import AsrtuneError
from asrtune.registry import Registry

__all__ = ["Augmentation", "AUGMENTATIONS", "Augmenter", "parse_augment", "augmented_item"]


@dataclass(frozen=True, kw_only=True)
class Augmentation:
    """One augmentation; subclasses are frozen dataclasses whose fields are the spec's options."""

    name: ClassVar[str]
    kind: ClassVar[str]  # "waveform" or "features"
    p: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.p <= 1:
            raise AsrtuneError(f"augmentation {self.name}: p must be in [0, 1]")

    def apply(
        self,
        data: np.ndarray,
        rng: np.random.Generator,
        *,
        max_samples: int | None = None,
        valid_frames: int | None = None,
    ) -> np.ndarray:
        """Return an augmented copy of ``data`` (samples (T,) or features (n_mels, frames))."""
        raise NotImplementedError

    def spec(self) -> str:
        defaults = type(self)()
        changed = [
            f"{f.name}={_format(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(defaults, f.name)
        ]
        return self.name + (":" + ",".join(changed) if changed else "")


AUGMENTATIONS: Registry[type[Augmentation]] = Registry("augmentation")


def _format(value: object) -> str:
    return "|".join(map(str, value)) if isinstance(value, tuple) else str(value)


@contextmanager
def _seeded_globals(rng: np.random.Generator) -> Iterator[None]:
    """Seed Python's and NumPy's global generators from ``rng`` for audiomentations; restore them after."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(int(rng.integers(2**63)))
    np.random.seed(int(rng.integers(2**32)))
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@AUGMENTATIONS.register("speed")
@dataclass(frozen=True, kw_only=True)
class Speed(Augmentation):
    """Speed perturbation (Ko et al. 2015): resampling changes tempo and pitch together (soxr).

    A factor above 1 speeds up. The factor is raised when needed so the result still fits Whisper's
    window: speech pushed past 30 s would be cut off while its transcript stayed whole.
    """

    name: ClassVar[str] = "speed"
    kind: ClassVar[str] = "waveform"
    factors: tuple[float, ...] = (0.9, 1.0, 1.1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.factors or any(not 0.5 <= f <= 2.0 for f in self.factors):
            raise AsrtuneError("augmentation speed: factors must be between 0.5 and 2")

    def apply(self, data, rng, *, max_samples=None, valid_frames=None):
        applies, factor = rng.random() < self.p, float(rng.choice(np.asarray(self.factors)))
        if max_samples and factor < 1.0 and len(data) / factor > max_samples:
            factor = min(1.0, len(data) / max_samples)
        if not applies or factor == 1.0 or len(data) == 0:
            return data.copy()
        return soxr.resample(data, SAMPLE_RATE * factor, SAMPLE_RATE, quality="HQ").astype(np.float32)


_COLOURS = {"white": 0.0, "pink": -3.01, "brown": -6.02, "blue": 3.01, "violet": 6.02}


@AUGMENTATIONS.register("noise")
@dataclass(frozen=True, kw_only=True)
class Noise(Augmentation):
    """Additive noise at a signal-to-noise ratio drawn from [min_snr_db, max_snr_db] (audiomentations).

    With ``folder``, clips from that folder of noise recordings (AddBackgroundNoise); without, generated
    noise of the given colour (AddColorNoise). ``folder`` is absolute or relative to the working directory.
    """

    name: ClassVar[str] = "noise"
    kind: ClassVar[str] = "waveform"
    p: float = 0.5
    min_snr_db: float = 10.0
    max_snr_db: float = 30.0
    folder: str = ""
    colour: str = "white"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_snr_db > self.max_snr_db:
            raise AsrtuneError("augmentation noise: min_snr_db must not exceed max_snr_db")
        if self.colour not in _COLOURS:
            raise AsrtuneError(f"augmentation noise: colour must be one of {', '.join(_COLOURS)}")
        if self.folder and not Path(self.folder).expanduser().is_dir():
            raise AsrtuneError(f"augmentation noise: folder not found: {self.folder}")

    @cached_property
    def _transform(self):
        if self.folder:
            from audiomentations import AddBackgroundNoise
            from audiomentations.core.utils import find_audio_files_in_paths

            if not find_audio_files_in_paths(str(Path(self.folder).expanduser())):
                raise AsrtuneError(f"augmentation noise: no audio files in {self.folder}")
            return AddBackgroundNoise(
                sounds_path=str(Path(self.folder).expanduser()),
                min_snr_db=self.min_snr_db,
                max_snr_db=self.max_snr_db,
                p=self.p,
            )
        from audiomentations import AddColorNoise

        decay = _COLOURS[self.colour]
        return AddColorNoise(
            min_snr_db=self.min_snr_db,
            max_snr_db=self.max_snr_db,
            min_f_decay=decay,
            max_f_decay=decay,
            p=self.p,
        )

    def apply(self, data, rng, *, max_samples=None, valid_frames=None):
        with _seeded_globals(rng):
            return np.asarray(self._transform(samples=data.copy(), sample_rate=SAMPLE_RATE), dtype=np.float32)


@AUGMENTATIONS.register("gain")
@dataclass(frozen=True, kw_only=True)
class Gain(Augmentation):
    """Loudness change by a gain drawn from [min_db, max_db] (audiomentations Gain)."""

    name: ClassVar[str] = "gain"
    kind: ClassVar[str] = "waveform"
    p: float = 0.5
    min_db: float = -6.0
    max_db: float = 6.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_db > self.max_db:
            raise AsrtuneError("augmentation gain: min_db must not exceed max_db")

    @cached_property
    def _transform(self):
        from audiomentations import Gain as AmGain

        return AmGain(min_gain_db=self.min_db, max_gain_db=self.max_db, p=self.p)

    def apply(self, data, rng, *, max_samples=None, valid_frames=None):
        with _seeded_globals(rng):
            return np.asarray(self._transform(samples=data.copy(), sample_rate=SAMPLE_RATE), dtype=np.float32)


@AUGMENTATIONS.register("specaugment")
@dataclass(frozen=True, kw_only=True)
class SpecAugment(Augmentation):
    """SpecAugment masking (Park et al. 2019) on log-mel features, filled with 0 as HF's Whisper does.

    Up to ``freq_masks`` bands of at most ``freq_width`` mel bins and ``time_masks`` stretches of at
    most ``time_width`` frames (10 ms each); time masks fall inside the audio, not Whisper's padding.
    """

    name: ClassVar[str] = "specaugment"
    kind: ClassVar[str] = "features"
    freq_masks: int = 2
    freq_width: int = 15
    time_masks: int = 2
    time_width: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.freq_masks, self.freq_width, self.time_masks, self.time_width) < 0:
            raise AsrtuneError("augmentation specaugment: counts and widths must be >= 0")

    def apply(self, data, rng, *, max_samples=None, valid_frames=None):
        out = data.copy()
        if rng.random() >= self.p:
            return out
        n_mels, frames = out.shape
        limit = frames if valid_frames is None else max(0, min(valid_frames, frames))
        for _ in range(self.freq_masks):
            width = int(rng.integers(0, min(self.freq_width, n_mels) + 1))
            first = int(rng.integers(0, n_mels - width + 1))
            out[first : first + width, :] = 0.0
        for _ in range(self.time_masks):
            width = int(rng.integers(0, min(self.time_width, limit) + 1))
            first = int(rng.integers(0, limit - width + 1))
            out[:, first : first + width] = 0.0
        return out


def _parse_value(raw: str, hint: object, where: str) -> object:
    if typing.get_origin(hint) is tuple:
        try:
            return tuple(float(part) for part in raw.split("|") if part)
        except ValueError:
            raise AsrtuneError(f"{where}: {raw!r} is not a |-separated list of numbers") from None
    try:
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
    except ValueError:
        raise AsrtuneError(f"{where}: {raw!r} is not a number") from None
    return raw


def _parse_one(part: str) -> Augmentation:
    name, _, args = part.strip().partition(":")
    cls = AUGMENTATIONS.get(name.strip())
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, object] = {}
    for item in filter(None, (a.strip() for a in args.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise AsrtuneError(f"augmentation {name}: expected key=value, got {item!r}")
        if key not in fields:
            raise AsrtuneError(
                f"augmentation {name}: unknown option {key!r} (known: {', '.join(sorted(fields))})"
            )
        if key in kwargs:
            raise AsrtuneError(f"augmentation {name}: {key} given twice")
        kwargs[key] = _parse_value(raw.strip(), hints[key], f"augmentation {name}.{key}")
    return cls(**kwargs)


def parse_augment(spec: str) -> tuple[Augmentation, ...]:
    """Parse ``name:k=v,...+name...`` (empty: no augmentation).

    Raises:
        AsrtuneError: unknown augmentation or option, bad value, or an empty part.
    """
    if not spec.strip():
        return ()
    parts = spec.split("+")
    if any(not p.strip() for p in parts):
        raise AsrtuneError(f"empty augmentation in spec {spec!r}")
    return tuple(_parse_one(p) for p in parts)


@dataclass(frozen=True)
class Augmenter:
    """A chain of augmentations with the run's seed.

    Attributes:
        augmentations: waveform ones run in order, then feature ones in order.
        seed: the run seed; with the micro-batch number and item index it fixes every draw.
    """

    augmentations: tuple[Augmentation, ...]
    seed: int = 0

    @classmethod
    def from_spec(cls, spec: str, seed: int = 0) -> Augmenter | None:
        """The augmenter for a spec, or None for an empty one."""
        augmentations = parse_augment(spec)
        return cls(augmentations, seed) if augmentations else None

    @property
    def acts_on_audio(self) -> bool:
        return any(a.kind == "waveform" for a in self.augmentations)

    def spec(self) -> str:
        return "+".join(a.spec() for a in self.augmentations)

    def _rng(self, draw: int, item: int, position: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, draw, item, position])

    def waveform(
        self, samples: np.ndarray, *, draw: int, item: int, max_samples: int | None = None
    ) -> np.ndarray:
        """Augment 16 kHz mono samples (T,) -> (T',); T' differs only under speed perturbation."""
        for position, augmentation in enumerate(self.augmentations):
            if augmentation.kind == "waveform":
                samples = augmentation.apply(
                    samples, self._rng(draw, item, position), max_samples=max_samples
                )
        return samples

    def features(
        self, features: np.ndarray, *, draw: int, item: int, valid_frames: int | None = None
    ) -> np.ndarray:
        """Augment log-mel features (n_mels, frames); the shape is kept."""
        for position, augmentation in enumerate(self.augmentations):
            if augmentation.kind == "features":
                features = augmentation.apply(
                    features, self._rng(draw, item, position), valid_frames=valid_frames
                )
        return features


def augmented_item(dataset, index: int, augmenter: Augmenter, draw: int) -> dict:
    """``dataset[index]`` with augmentation: audio re-read and re-extracted when a waveform augmentation runs.

    Args:
        dataset: a :class:`~asrtune.data.features.FeatureDataset`.
        index: the item.
        augmenter: the chain.
        draw: the micro-batch number (with the seed, it fixes the random draws).
    """
    extractor = dataset.processor.feature_extractor
    if augmenter.acts_on_audio:
        samples = load_audio(dataset.utterances[index].audio)
        samples = augmenter.waveform(samples, draw=draw, item=index, max_samples=extractor.n_samples)
        features = extractor(samples, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
        n_samples = len(samples)
    else:
        features = dataset.features[index].numpy()
        n_samples = int(round(dataset.durations[index] * SAMPLE_RATE))
    valid_frames = min(-(-n_samples // extractor.hop_length), features.shape[-1])
    features = augmenter.features(
        np.ascontiguousarray(features, dtype=np.float32), draw=draw, item=index, valid_frames=valid_frames
    )
    return {
        "input_features": torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)),
        "labels": dataset.labels[index],
        "index": index,
        "frames": valid_frames,
    }
