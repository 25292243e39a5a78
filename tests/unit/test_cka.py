"""Linear CKA: against an independent kernel formula, its invariances, streaming, speech frames, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_whisper, write_tiny_manifest

from asrtune.analysis.cka import CKAAccumulator, layer_cka, linear_cka, sample_indices, speech_frames
from asrtune.cli import main
from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import read_manifest
from asrtune.models.load import LoadedModel
from asrtune.runs.load import load_model


def kernel_cka(x: np.ndarray, y: np.ndarray) -> float:
    """CKA through n x n Gram matrices and HSIC (Gretton et al.): an independent route to the same number."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    gram_x, gram_y = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float((gram_x * gram_y).sum() / np.sqrt((gram_x * gram_x).sum() * (gram_y * gram_y).sum()))


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6))
    y = x @ rng.standard_normal((6, 5)) + 0.5 * rng.standard_normal((40, 5))
    return x, y


def test_matches_the_kernel_formula(xy):
    x, y = xy
    value = linear_cka(torch.from_numpy(x), torch.from_numpy(y))
    assert value == pytest.approx(kernel_cka(x, y), rel=1e-10)
    assert 0.3 < value < 0.99  # related but not identical


def test_identity_orthogonal_and_isotropic_scaling_invariance(xy):
    x, _ = xy
    t = torch.from_numpy(x)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    assert linear_cka(t, t) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(t, t @ q) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(t, 7.5 * t + 3.0) == pytest.approx(1.0, abs=1e-12)  # scale and shift
    # Not invariant to scaling the axes unequally: the value must drop.
    assert linear_cka(t, t * torch.tensor([10.0, 1, 1, 1, 1, 0.1], dtype=torch.float64)) < 0.9


def test_streaming_equals_one_shot(xy):
    x, y = (torch.from_numpy(a) for a in xy)
    accumulator = CKAAccumulator()
    for rows in (slice(0, 7), slice(7, 8), slice(8, 40)):
        accumulator.update(x[rows].float(), y[rows].float())
    assert accumulator.n == 40
    assert accumulator.value() == pytest.approx(linear_cka(x, y), rel=1e-5)


def test_speech_frames_and_sampling():
    # 1 s at 16 kHz, hop 160: 100 mel frames, 50 encoder frames after the stride-2 convolution.
    assert speech_frames(16000, 160, 1500) == 50
    assert speech_frames(16001, 160, 1500) == 51
    assert speech_frames(16000 * 40, 160, 1500) == 1500  # capped at the encoder's positions
    assert speech_frames(10, 160, 1500) == 1
    assert sample_indices(5, None) == [0, 1, 2, 3, 4] == sample_indices(5, 9)
    chosen = sample_indices(100, 10, seed=3)
    assert len(set(chosen)) == 10 and chosen == sorted(chosen) == sample_indices(100, 10, seed=3)


@pytest.fixture
def tiny_set(tiny_model_dir, tmp_path):
    loaded = load_model(str(tiny_model_dir))
    manifest = write_tiny_manifest(tmp_path, ["hello world", "good morning", "the cat sat", "open the door"])
    dataset = FeatureDataset(read_manifest(manifest), loaded.processor, multilingual=False, progress=False)
    return loaded, dataset, manifest


def test_a_model_against_itself_is_one_at_every_layer(tiny_set):
    loaded, dataset, _ = tiny_set
    result = layer_cka(loaded, loaded, dataset, decoder=True, batch_size=3, progress=False)
    assert set(result.encoder) == {0, 1} and set(result.decoder) == {0, 1}
    assert all(
        v == pytest.approx(1.0, abs=1e-9) for v in [*result.encoder.values(), *result.decoder.values()]
    )
    expected = sum(math.ceil(d * 16000 / 320) for d in dataset.durations)  # 0.4..0.7 s: 20..35 frames
    assert result.frames == expected == 20 + 25 + 30 + 35
    assert result.tokens == sum(len(labels) for labels in dataset.labels)


def test_matches_a_hand_computation_on_speech_frames_only(tiny_set):
    base, dataset, _ = tiny_set
    other = LoadedModel(model=tiny_whisper(seed=5, perturb=0.05), processor=base.processor, source="other")
    result = layer_cka(base, other, dataset, progress=False)
    keep = [math.ceil(d * 16000 / 320) for d in dataset.durations]
    features = torch.stack(list(dataset.features))
    with torch.no_grad():
        hidden = [
            m.model.model.encoder(features, output_hidden_states=True).hidden_states for m in (base, other)
        ]
    # hidden_states[i + 1] is layer i's output (the last one has the final layer norm applied on top).
    layer = 0
    x = torch.cat([hidden[0][layer + 1][b, :k] for b, k in enumerate(keep)])
    y = torch.cat([hidden[1][layer + 1][b, :k] for b, k in enumerate(keep)])
    assert result.encoder[layer] == pytest.approx(linear_cka(x, y), rel=1e-6)
    padded = linear_cka(hidden[0][layer + 1].reshape(-1, 32), hidden[1][layer + 1].reshape(-1, 32))
    assert result.encoder[layer] != pytest.approx(padded, rel=1e-3)  # the padding would change the number
    assert all(0 < v < 0.999 for v in result.encoder.values())


def test_cli_json_and_plot(tiny_set, tiny_model_dir, tmp_path, capsys):
    _, _, manifest = tiny_set
    plot = tmp_path / "cka.png"
    code = main(
        [
            "analyze",
            "cka",
            "--base",
            str(tiny_model_dir),
            "--tuned",
            str(tiny_model_dir),
            "--data",
            str(manifest),
            "--json",
            "--plot",
            str(plot),
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(out) == ["encoder"] and list(out["encoder"]) == ["0", "1"]
    assert all(v == pytest.approx(1.0, abs=1e-9) for v in out["encoder"].values())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_needs_a_base_unless_tuned_is_a_run(tiny_set, tiny_model_dir, capsys):
    _, _, manifest = tiny_set
    assert main(["analyze", "cka", "--tuned", str(tiny_model_dir), "--data", str(manifest)]) == 2
    assert "--base is needed" in capsys.readouterr().err
