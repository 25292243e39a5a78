"""The log-mel feature cache: keyed by audio content and extractor settings, atomic, never stale."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_processor, write_tone
from transformers import WhisperFeatureExtractor

import asrtune.data.feature_cache as feature_cache
from asrtune.data.audio import load_audio
from asrtune.data.feature_cache import FeatureCache, extract_features, extractor_settings, file_digest
from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import Utterance
from asrtune.paths import cache_dir


def _fresh(path, extractor):
    return extractor(load_audio(path), sampling_rate=16000, return_tensors="np").input_features[0]


class CountingExtractor:
    """Wraps a feature extractor and counts how often features are really computed."""

    def __init__(self, extractor):
        self.inner = extractor
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_second_extraction_is_a_hit_with_identical_features(tmp_path):
    write_tone(tmp_path / "a.wav", seconds=0.6)
    extractor = CountingExtractor(WhisperFeatureExtractor(feature_size=80, chunk_length=1))
    cache = FeatureCache.for_extractor(extractor, root=tmp_path / "cache")
    first, n = extract_features(tmp_path / "a.wav", extractor, cache)
    second, n2 = extract_features(tmp_path / "a.wav", extractor, cache)
    assert extractor.calls == 1 and (n, n2) == (9600, 9600)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(second, _fresh(tmp_path / "a.wav", extractor.inner))
    assert second.dtype == np.float32 and second.shape == (80, 100)
    entries = list((tmp_path / "cache").rglob("*"))
    assert [p.suffix for p in entries if p.is_file()] == [".npz"]  # no staging file left behind


def test_the_key_follows_audio_content_not_the_file_name(tmp_path):
    write_tone(tmp_path / "a.wav", seconds=0.5)
    (tmp_path / "b.wav").write_bytes((tmp_path / "a.wav").read_bytes())
    write_tone(tmp_path / "c.wav", seconds=0.5, freq=900.0)
    extractor = CountingExtractor(WhisperFeatureExtractor(feature_size=80, chunk_length=1))
    cache = FeatureCache.for_extractor(extractor, root=tmp_path / "cache")
    for name in ("a.wav", "b.wav", "c.wav"):
        extract_features(tmp_path / name, extractor, cache)
    assert extractor.calls == 2  # b.wav has a.wav's bytes
    assert (
        file_digest(tmp_path / "a.wav") == file_digest(tmp_path / "b.wav") != file_digest(tmp_path / "c.wav")
    )


@pytest.mark.parametrize(
    "change",
    [
        dict(feature_size=64),
        dict(chunk_length=2),
        dict(hop_length=200),
        dict(n_fft=512),
        dict(padding_value=0.1),
    ],
)
def test_changing_the_extractor_settings_invalidates(tmp_path, change):
    write_tone(tmp_path / "a.wav", seconds=0.6)
    base = {"feature_size": 80, "chunk_length": 1}
    one = CountingExtractor(WhisperFeatureExtractor(**base))
    other = CountingExtractor(WhisperFeatureExtractor(**{**base, **change}))
    cache_one = FeatureCache.for_extractor(one, root=tmp_path / "cache")
    cache_other = FeatureCache.for_extractor(other, root=tmp_path / "cache")
    assert cache_one.path("x") != cache_other.path("x")
    extract_features(tmp_path / "a.wav", one, cache_one)
    features, _ = extract_features(tmp_path / "a.wav", other, cache_other)
    assert other.calls == 1  # recomputed, not served the other setting's entry
    np.testing.assert_array_equal(features, _fresh(tmp_path / "a.wav", other.inner))


def test_a_new_feature_version_invalidates(tmp_path, monkeypatch):
    extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=1)
    before = FeatureCache.for_extractor(extractor, root=tmp_path)
    monkeypatch.setattr(feature_cache, "FEATURE_VERSION", feature_cache.FEATURE_VERSION + 1)
    assert FeatureCache.for_extractor(extractor, root=tmp_path).path("x") != before.path("x")
    assert set(extractor_settings(extractor)) == {
        "n_mels",
        "sampling_rate",
        "n_fft",
        "hop_length",
        "chunk_length",
        "n_samples",
        "padding_value",
        "dither",
        "feature_version",
        "soxr",
    }


def test_a_corrupt_entry_is_recomputed_and_dither_is_never_cached(tmp_path):
    write_tone(tmp_path / "a.wav", seconds=0.4)
    extractor = CountingExtractor(WhisperFeatureExtractor(feature_size=80, chunk_length=1))
    cache = FeatureCache.for_extractor(extractor, root=tmp_path / "cache")
    extract_features(tmp_path / "a.wav", extractor, cache)
    cache.path(file_digest(tmp_path / "a.wav")).write_bytes(b"not a zip")
    features, _ = extract_features(tmp_path / "a.wav", extractor, cache)
    assert extractor.calls == 2
    np.testing.assert_array_equal(features, _fresh(tmp_path / "a.wav", extractor.inner))
    assert (
        FeatureCache.for_extractor(WhisperFeatureExtractor(feature_size=80, chunk_length=1, dither=1.0))
        is None
    )


def test_feature_dataset_uses_the_default_cache_dir(tmp_path):
    write_tone(tmp_path / "a.wav", seconds=0.5)
    processor = make_processor()
    rows = [Utterance(id="a", audio=str(tmp_path / "a.wav"), text="hi")]
    cache = FeatureCache.for_extractor(processor.feature_extractor)
    assert cache.root == cache_dir() / "features"
    cached = FeatureDataset(rows, processor, multilingual=False, progress=False, cache=cache)
    plain = FeatureDataset(rows, processor, multilingual=False, progress=False)
    assert not cache.path(file_digest(tmp_path / "a.wav")).is_file()  # features are made when first read
    assert (cached.features[0] == plain.features[0]).all() and list(cached.durations) == [0.5]
    assert cache.path(file_digest(tmp_path / "a.wav")).is_file()
    again = FeatureDataset(rows, processor, multilingual=False, progress=False, cache=cache)
    assert (again.features[0] == plain.features[0]).all() and list(again.durations) == [0.5]
