"""Training-time augmentation: specs, determinism under a seed, and what each augmentation does."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import SAMPLE_RATE, make_processor, write_tone

from asrtune.config import DataConfig, config_from_dict, config_to_dict
from asrtune.data.augment import (
    AUGMENTATIONS,
    Augmenter,
    Gain,
    Noise,
    SpecAugment,
    Speed,
    augmented_item,
    parse_augment,
)
from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import Utterance
from asrtune.errors import AsrtuneError

FULL = "speed+noise:p=1,min_snr_db=10,max_snr_db=10+gain:p=1,min_db=-3,max_db=-3+specaugment"


def _tone(seconds=1.0, freq=440.0):
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_registered_augmentations():
    assert AUGMENTATIONS.names() == ["gain", "noise", "specaugment", "speed"]


def test_spec_parses_and_round_trips():
    chain = parse_augment(
        "speed:factors=0.8|1.2+noise:min_snr_db=5,max_snr_db=15,colour=pink+gain+specaugment"
    )
    assert chain == (
        Speed(factors=(0.8, 1.2)),
        Noise(min_snr_db=5.0, max_snr_db=15.0, colour="pink"),
        Gain(),
        SpecAugment(),
    )
    spec = Augmenter(chain).spec()
    assert spec == "speed:factors=0.8|1.2+noise:min_snr_db=5.0,max_snr_db=15.0,colour=pink+gain+specaugment"
    assert parse_augment(spec) == chain
    assert parse_augment("") == () and Augmenter.from_spec("  ") is None


@pytest.mark.parametrize(
    "spec, message",
    [
        ("wobble", "unknown augmentation 'wobble'"),
        ("speed:rate=2", "unknown option 'rate'"),
        ("speed:factors=fast", "not a |-separated list"),
        ("gain:min_db=3,max_db=1", "min_db must not exceed max_db"),
        ("noise:folder=/no/such/folder", "folder not found"),
        ("noise:colour=plaid", "colour must be one of"),
        ("speed++gain", "empty augmentation"),
        ("gain:p=2", "p must be in"),
    ],
)
def test_bad_specs_are_clear_errors(spec, message):
    with pytest.raises(AsrtuneError, match=message):
        parse_augment(spec)


def test_run_config_carries_the_spec():
    config = config_from_dict({"data": {"augment": FULL, "duration_buckets": 4}})
    assert config.data.augment == FULL and config.data.duration_buckets == 4
    assert config_from_dict(config_to_dict(config)) == config
    with pytest.raises(AsrtuneError, match="unknown augmentation 'wobble'"):
        DataConfig(augment="wobble")
    with pytest.raises(AsrtuneError, match="duration_buckets must be >= 1"):
        DataConfig(duration_buckets=0)
    assert DataConfig().augment == "" and DataConfig().feature_cache is True


def test_deterministic_under_a_seed_and_leaves_global_generators_alone():
    samples = _tone()
    augmenter = Augmenter.from_spec(FULL, seed=7)
    random.seed(123)
    np.random.seed(123)
    expected_python, expected_numpy = random.random(), np.random.random()
    random.seed(123)
    np.random.seed(123)
    first = augmenter.waveform(samples, draw=3, item=1)
    again = Augmenter.from_spec(FULL, seed=7).waveform(samples, draw=3, item=1)
    assert (random.random(), np.random.random()) == (expected_python, expected_numpy)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, samples)
    # Another micro-batch, item or seed draws differently.
    for other in (
        augmenter.waveform(samples, draw=4, item=1),
        augmenter.waveform(samples, draw=3, item=2),
        Augmenter.from_spec(FULL, seed=8).waveform(samples, draw=3, item=1),
    ):
        assert other.shape != first.shape or not np.array_equal(other, first)
    features = np.random.default_rng(0).standard_normal((80, 100)).astype(np.float32)
    masked = augmenter.features(features, draw=3, item=1, valid_frames=60)
    np.testing.assert_array_equal(masked, augmenter.features(features, draw=3, item=1, valid_frames=60))


def test_speed_perturbation_changes_length_and_pitch():
    samples = _tone(1.0, freq=500.0)
    rng = np.random.default_rng(0)
    faster = Speed(factors=(1.25,)).apply(samples, rng)
    assert len(faster) == pytest.approx(len(samples) / 1.25, abs=2)
    spectrum = np.abs(np.fft.rfft(faster))
    assert np.fft.rfftfreq(len(faster), 1 / SAMPLE_RATE)[np.argmax(spectrum)] == pytest.approx(625.0, abs=3.0)
    # Slowing down never pushes audio past Whisper's window (here 1.1 s).
    slower = Speed(factors=(0.5,)).apply(samples, rng, max_samples=int(1.1 * SAMPLE_RATE))
    assert len(slower) == pytest.approx(1.1 * SAMPLE_RATE, abs=2)
    assert np.array_equal(Speed(factors=(1.0,)).apply(samples, rng), samples)


def test_noise_lands_at_the_requested_snr():
    samples = _tone(2.0)
    for colour in ("white", "pink"):
        noisy = Noise(p=1.0, min_snr_db=10.0, max_snr_db=10.0, colour=colour).apply(
            samples, np.random.default_rng(1)
        )
        snr = 20 * np.log10(_rms(samples) / _rms(noisy - samples))
        assert snr == pytest.approx(10.0, abs=0.5), colour


@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning"
)  # audioread (via librosa) imports aifc, audioop, sunau
def test_noise_from_a_folder(tmp_path):
    write_tone(tmp_path / "noise" / "hum.wav", seconds=3.0, freq=60.0)
    samples = _tone(1.0)
    noisy = Noise(p=1.0, min_snr_db=6.0, max_snr_db=6.0, folder=str(tmp_path / "noise")).apply(
        samples, np.random.default_rng(2)
    )
    snr = 20 * np.log10(_rms(samples) / _rms(noisy - samples))
    assert snr == pytest.approx(6.0, abs=0.5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AsrtuneError, match="no audio files"):
        Noise(p=1.0, folder=str(tmp_path / "empty")).apply(samples, np.random.default_rng(2))


def test_gain_scales_by_the_drawn_decibels():
    samples = _tone()
    quieter = Gain(p=1.0, min_db=-6.0, max_db=-6.0).apply(samples, np.random.default_rng(0))
    np.testing.assert_allclose(quieter, samples * 10 ** (-6 / 20), rtol=1e-5)
    assert np.array_equal(Gain(p=0.0).apply(samples, np.random.default_rng(0)), samples)


def test_specaugment_masks_bands_and_frames_inside_the_audio():
    features = np.ones((80, 300), np.float32)
    masked = SpecAugment(freq_masks=1, freq_width=10, time_masks=2, time_width=40).apply(
        features, np.random.default_rng(5), valid_frames=120
    )
    zero_rows = np.flatnonzero((masked == 0).all(axis=1))
    zero_cols = np.flatnonzero((masked == 0).all(axis=0))
    assert len(zero_rows) <= 10 and len(zero_cols) <= 80
    assert zero_cols.size == 0 or zero_cols.max() < 120  # never in Whisper's padding
    assert (masked[:, 120:][~np.isin(np.arange(80), zero_rows)] == 1).all()
    assert (masked == 0).any() and features.min() == 1  # a copy: the input is untouched


def test_augmented_items_keep_labels_and_shape(tmp_path):
    processor = make_processor()
    write_tone(tmp_path / "a.wav", seconds=0.7)
    dataset = FeatureDataset(
        [Utterance(id="a", audio=str(tmp_path / "a.wav"), text="hello")],
        processor,
        multilingual=False,
        progress=False,
    )
    for spec in (FULL, "specaugment:time_masks=3"):
        augmenter = Augmenter.from_spec(spec, seed=1)
        item = augmented_item(dataset, 0, augmenter, draw=0)
        assert item["input_features"].shape == (80, 100) and item["input_features"].dtype == torch.float32
        assert list(item["labels"]) == list(dataset[0]["labels"]) and item["index"] == 0
        assert not torch.equal(item["input_features"], dataset[0]["input_features"])
        assert torch.equal(
            item["input_features"], augmented_item(dataset, 0, augmenter, draw=0)["input_features"]
        )
    # The frames before the padding follow the audio as augmented (a speed change moves them).
    assert dataset[0]["frames"] == 70
    assert augmented_item(dataset, 0, Augmenter.from_spec("specaugment", seed=1), draw=0)["frames"] == 70
    slower = augmented_item(dataset, 0, Augmenter.from_spec("speed:p=1,factors=0.8", seed=1), draw=0)
    assert slower["frames"] == 88  # 0.7 s / 0.8 = 0.875 s
    # Feature-only augmentation reuses the stored features: where nothing is masked they are unchanged.
    item = augmented_item(dataset, 0, Augmenter.from_spec("specaugment", seed=1), draw=0)
    untouched = item["input_features"] != 0
    assert torch.equal(item["input_features"][untouched], dataset[0]["input_features"][untouched])
