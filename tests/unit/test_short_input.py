"""Speed lever 3: the encoder fed the batch's longest utterance instead of the whole padded window."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_training import make_config

import asrtune.models.whisper as whisper
from asrtune.data.features import FeatureDataset, collate
from asrtune.data.manifest import read_manifest
from asrtune.evaluation.decode import transcribe_dataset
from asrtune.models.short_input import encode_short, short_input_frames
from asrtune.strategies import apply_strategy
from asrtune.training.recipe import train

from conftest import read_jsonl, tiny_whisper


@pytest.mark.parametrize("valid, expected", [([37, 60], 60), ([37], 38), ([150, 20], 100), ([0], 2)])
def test_the_cut_is_the_longest_utterance_rounded_up_to_even(valid, expected):
    assert short_input_frames(valid, 100) == expected
    assert short_input_frames(torch.tensor(valid), 100) == expected


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_uncut_it_is_the_transformers_encoder(mode):
    model = tiny_whisper(seed=2, perturb=0.05)
    model.train(mode == "train")
    features = torch.randn(2, 80, 100, generator=torch.Generator().manual_seed(0))
    expected = model.model.encoder(features).last_hidden_state
    assert torch.allclose(encode_short(model, features, 100), expected, atol=1e-6)


def test_cut_it_is_an_encoder_built_for_the_shorter_window():
    """Oracle: the same weights in a Whisper whose window *is* 60 frames (30 positions)."""
    model = tiny_whisper(seed=2, perturb=0.05)
    short = tiny_whisper(max_source_positions=30)
    state = model.state_dict()
    state["model.encoder.embed_positions.weight"] = state["model.encoder.embed_positions.weight"][:30]
    short.load_state_dict(state)
    features = torch.randn(3, 80, 100, generator=torch.Generator().manual_seed(1))
    expected = short.model.encoder(features[..., :60]).last_hidden_state
    got = encode_short(model, features, 60)
    assert got.shape == (3, 30, 32)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, model.model.encoder(features).last_hidden_state[:, :30], atol=1e-3)


def test_adapters_and_lora_act_on_the_cut_input():
    model = apply_strategy(tiny_whisper(seed=2, perturb=0.05), "adapter:d=4")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".up." in name:
                parameter.normal_(0, 0.5)
    plain = tiny_whisper(seed=2, perturb=0.05)
    features = torch.randn(1, 80, 100, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(encode_short(model, features, 40), encode_short(plain, features, 40), atol=1e-4)


def test_decoding_with_the_cut_runs_the_encoder_on_the_speech_only(tiny_loaded, tiny_data):
    dataset = FeatureDataset(read_manifest(tiny_data[1]), tiny_loaded.processor, multilingual=False, progress=False)
    assert dataset.valid_frames == [40, 50, 60]  # 0.4, 0.5, 0.6 s at 100 frames per second
    assert collate([dataset[0], dataset[2]])["frames"].tolist() == [40, 60]
    seen: list[int] = []
    hook = tiny_loaded.model.model.encoder.layers[0].register_forward_pre_hook(
        lambda module, args: seen.append(args[0].shape[1]))
    try:
        short = transcribe_dataset(tiny_loaded, dataset, batch_size=2, max_new_tokens=4, progress=False,
                                   short_input=True)
        full = transcribe_dataset(tiny_loaded, dataset, batch_size=2, max_new_tokens=4, progress=False)
    finally:
        hook.remove()
    assert seen == [25, 30, 50, 50]  # batches of (40, 50) and (60) frames, then the padded window twice
    assert len(short) == len(full) == 3 and all(isinstance(text, str) for text in short)


def test_the_recipe_trains_on_the_cut_input_unless_the_whole_encoder_is_cached(tiny_model_dir, tiny_data, tmp_path,
                                                                       monkeypatch):
    frames_seen: list[int] = []

    def recording(model, features, frames):
        frames_seen.append(frames)
        return encode_short(model, features, frames)

    monkeypatch.setattr(whisper, "encode_short", recording)
    config = make_config(tiny_model_dir, tiny_data, max_steps=3, eval_every=3)
    config = dataclasses.replace(config, strategy="full", loop=dataclasses.replace(config.loop, short_input=True))
    train(config, tmp_path / "cut", progress=False)
    losses = [row["loss"] for row in read_jsonl(tmp_path / "cut" / "metrics.jsonl") if "loss" in row]
    assert len(frames_seen) == 3 and all(2 <= f < 100 and f % 2 == 0 for f in frames_seen)
    assert len(losses) == 3 and all(loss == loss and loss > 0 for loss in losses)

    frames_seen.clear()  # a frozen bottom layer: the cut window from the stem up, no prefix cache
    train(dataclasses.replace(config, strategy="freeze:n=1"), tmp_path / "freeze", progress=False)
    assert len(frames_seen) == 3
    frames_seen.clear()  # the whole encoder frozen: its cached outputs cost nothing per step
    train(dataclasses.replace(config, strategy="decoder"), tmp_path / "cached", progress=False)
    assert frames_seen == []


def test_evaluate_cli_takes_short_input(tiny_model_dir, tiny_data, monkeypatch, capsys):
    import json

    from asrtune.cli import main

    calls: list[int] = []

    def recording(model, features, frames):
        calls.append(frames)
        return encode_short(model, features, frames)

    monkeypatch.setattr(whisper, "encode_short", recording)
    assert main(["evaluate", str(tiny_model_dir), "--data", str(tiny_data[1]), "--short-input", "--json",
                 "--max-new-tokens", "4"]) == 0
    assert calls == [60]  # one batch of three utterances, the longest 0.6 s
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 3
