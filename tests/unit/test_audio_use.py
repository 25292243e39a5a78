"""asrtune analyze audio-use: the loss with each clip's own audio, another clip's, silence."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_TEXTS, write_tiny_manifest

from asrtune.analysis.audio_use import audio_use
from asrtune.cli import main
from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import read_manifest
from asrtune.runs.load import load_model


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_tiny_manifest(tmp_path_factory.mktemp("audio-use"), TINY_TEXTS, "clips.jsonl")


def _dataset(loaded, manifest):
    return FeatureDataset(read_manifest(manifest), loaded.processor, multilingual=False)


def test_a_model_deaf_to_its_audio_shows_no_gap(tiny_qwen2_audio_dir, manifest):
    loaded = load_model(str(tiny_qwen2_audio_dir))
    with torch.no_grad():  # the projector ignores its input: every audio gives the same embeddings
        loaded.model.model.multi_modal_projector.linear.weight.zero_()
    result = audio_use(loaded, _dataset(loaded, manifest), progress=False)
    assert result.loss["own"] == pytest.approx(result.loss["shuffled"], abs=1e-6)
    assert result.loss["own"] == pytest.approx(result.loss["silence"], abs=1e-6)
    assert not result.uses_audio and result.utterances == len(TINY_TEXTS)


def test_a_model_that_hears_changes_its_loss_with_the_audio(tiny_qwen2_audio_dir, manifest):
    loaded = load_model(str(tiny_qwen2_audio_dir))
    with torch.no_grad():
        loaded.model.model.multi_modal_projector.linear.weight.mul_(50)  # audio dominates the embeddings
    result = audio_use(loaded, _dataset(loaded, manifest), progress=False)
    assert result.loss["own"] != pytest.approx(result.loss["shuffled"], abs=1e-4)
    assert result.loss["own"] != pytest.approx(result.loss["silence"], abs=1e-4)
    assert set(result.as_dict()["gap"]) == {"shuffled", "silence"}


def test_the_command_prints_the_three_losses_and_json(tiny_qwen2_audio_dir, manifest, capsys):
    assert main(["analyze", "audio-use", str(tiny_qwen2_audio_dir), "--data", str(manifest), "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out.strip().splitlines()[-1])
    assert record["utterances"] == len(TINY_TEXTS) and set(record["loss"]) == {"own", "shuffled", "silence"}
    assert "another clip's audio" in captured.err and "loss per token" in captured.err
