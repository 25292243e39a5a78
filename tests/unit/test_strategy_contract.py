"""The strategy contract, run over every registered strategy on a tiny random Whisper.

For each: the forward pass runs; exactly the intended parameters train (checked by name); after a
few optimiser steps every frozen parameter is bit-identical and every trainable one moved; where
the strategy promises identity (adapter, lora; not prompt, whose vectors are new inputs) step-0 logits equal the base model's; save -> load
reproduces logits; merged LoRA equals unmerged.
"""

from __future__ import annotations

import re

import pytest
import torch

from asrtune.errors import AsrtuneError
from asrtune.strategies import STRATEGIES, apply_strategy, merge_strategy
from asrtune.runs.weights import load_trainable, save_trainable

from conftest import tiny_whisper

STEM = ("encoder.conv1.", "encoder.conv2.", "encoder.embed_positions.")


def _plain(name: str) -> str:
    """Parameter name without PEFT's and WhisperForConditionalGeneration's prefixes."""
    return re.sub(r"^(base_model\.model\.)?(model\.)?", "", name)


def _in_encoder_layer(name: str, *indices: int) -> bool:
    return any(_plain(name).startswith(f"encoder.layers.{i}.") for i in indices)


# spec -> which parameter names must train (tiny model: 3 encoder layers, 2 decoder layers)
EXPECTED = {
    "full": lambda n: not _plain(n).startswith("encoder.embed_positions."),
    "freeze:n=2": lambda n: not _plain(n).startswith(STEM) and not _in_encoder_layer(n, 0, 1),
    "reinit:m=1": lambda n: not _plain(n).startswith(STEM) and not _in_encoder_layer(n, 0, 1),
    "decoder": lambda n: _plain(n).startswith("decoder."),
    "lora:r=4,alpha=8": lambda n: ".lora_" in n,
    "adapter:d=8": lambda n: ".adapter." in n,
    "adapter:d=8,encoder_layers=top-1": lambda n: ".adapter." in n and not _in_encoder_layer(n, 0, 1),
    "freeze:n=2+lora:r=4": lambda n: ".lora_" in n and not _in_encoder_layer(n, 0, 1),
    "decoder+adapter:d=8,encoder_layers=none": lambda n: ".adapter." in n and _plain(n).startswith("decoder."),
    "adapter:d=8+lora:r=4": lambda n: ".adapter." in n or ".lora_" in n,
    "prompt:n=4": lambda n: ".soft_prompt." in n,
    "lora:r=4+prompt:n=4": lambda n: ".lora_" in n or ".soft_prompt." in n,
    "prompt:n=4+lora:r=4": lambda n: ".lora_" in n or ".soft_prompt." in n,
    "freeze:n=2+prompt:n=4,init=random": lambda n: ".soft_prompt." in n,
}
# Soft prompts are new decoder inputs, never the identity: their step 0 is checked in test_prompt.py.
IDENTITY_AT_START = [s for s in EXPECTED if s.split("+")[-1].split(":")[0] in ("lora", "adapter")
                     and not s.startswith(("reinit", "full")) and "prompt" not in s]


def _base(seed: int = 0) -> torch.nn.Module:
    model = tiny_whisper(seed=seed, perturb=0.02, encoder_layers=3)
    for parameter in model.parameters():
        parameter.requires_grad_(True)  # as transformers loads them
    return model


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 80, 100, generator=generator)
    labels = torch.randint(0, 50000, (2, 6), generator=generator)
    return {"input_features": features, "labels": labels}


def _logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_every_registered_strategy_is_covered():
    covered = {spec.split("+")[0].split(":")[0] for spec in EXPECTED} | {
        part.split(":")[0] for spec in EXPECTED for part in spec.split("+")}
    assert {n for n in STRATEGIES.names() if "whisper" in STRATEGIES.get(n).families} <= covered


@pytest.mark.parametrize("spec", list(EXPECTED))
def test_exactly_the_intended_parameters_train(spec):
    model = apply_strategy(_base(), spec)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    intended = {n for n, _ in model.named_parameters() if EXPECTED[spec](n)}
    assert trainable == intended
    assert trainable  # something trains


@pytest.mark.parametrize("spec", list(EXPECTED))
def test_training_moves_trainable_and_keeps_frozen_bit_identical(spec):
    torch.manual_seed(0)
    model = apply_strategy(_base(), spec)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    model.train()
    for step in range(3):
        loss = model(**_batch(step)).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert not torch.equal(parameter, before[name]), f"{name} did not move"
        else:
            assert torch.equal(parameter, before[name]), f"frozen {name} changed"


@pytest.mark.parametrize("spec", IDENTITY_AT_START)
def test_step_zero_is_the_pretrained_model(spec):
    batch = _batch()
    reference = _logits(_base(), batch)
    adapted = _logits(apply_strategy(_base(), spec), batch)
    assert torch.equal(adapted, reference)


@pytest.mark.parametrize("spec", list(EXPECTED))
def test_save_then_load_reproduces_logits(spec, tmp_path):
    torch.manual_seed(1)
    model = apply_strategy(_base(), spec)
    with torch.no_grad():  # stand in for training: every trainable weight gets a distinct value
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.01)
    batch = _batch()
    expected = _logits(model, batch)
    save_trainable(model, tmp_path, {"strategy": spec})
    torch.manual_seed(99)  # a different draw for reinit's fresh layers: the checkpoint must win
    restored = apply_strategy(_base(), spec)
    load_trainable(restored, tmp_path)
    assert torch.equal(_logits(restored, batch), expected)


def test_checkpoint_of_one_strategy_does_not_load_into_another(tmp_path):
    save_trainable(apply_strategy(_base(), "lora:r=4"), tmp_path, {})
    with pytest.raises(AsrtuneError, match="does not match the strategy"):
        load_trainable(apply_strategy(_base(), "adapter:d=8"), tmp_path)


@pytest.mark.parametrize("spec", ["lora:r=4,alpha=8", "freeze:n=2+lora:r=4"])
def test_merged_lora_equals_unmerged(spec):
    model = apply_strategy(_base(), spec)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    batch = _batch()
    unmerged = _logits(model, batch)
    merged = merge_strategy(model, spec)
    assert type(merged).__name__ == "WhisperForConditionalGeneration"
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert torch.allclose(_logits(merged, batch), unmerged, atol=1e-5)
    assert not torch.allclose(unmerged, _logits(_base(), batch), atol=1e-3)  # the update mattered


@pytest.mark.parametrize("spec", ["full", "freeze:n=1", "reinit:m=1", "decoder"])
def test_select_strategies_merge_to_a_plain_model_that_transformers_reloads(spec, tmp_path):
    from transformers import WhisperForConditionalGeneration

    model = apply_strategy(_base(), spec)
    with torch.no_grad():  # a training run's update to what the strategy trains
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05)
    batch = _batch()
    trained = _logits(model, batch)
    merged = merge_strategy(model, spec)
    assert type(merged) is WhisperForConditionalGeneration
    merged.save_pretrained(tmp_path / "plain")
    reloaded = WhisperForConditionalGeneration.from_pretrained(tmp_path / "plain")
    torch.testing.assert_close(_logits(reloaded, batch), trained, rtol=0, atol=1e-6)
    assert not torch.allclose(trained, _logits(_base(), batch), atol=1e-3)  # the update is in what was saved


def test_adapters_refuse_to_merge_and_name_the_alternative():
    model = apply_strategy(_base(), "adapter:d=8")
    with pytest.raises(AsrtuneError, match="cannot be exported as plain weights.*lora"):
        merge_strategy(model, "adapter:d=8")


def test_reinit_draws_xavier_normal_weights_and_resets_norms():
    base = tiny_whisper(seed=0, perturb=0.02, d_model=256, encoder_ffn_dim=512, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_layers=3)
    bottom = {n: p.detach().clone() for n, p in base.named_parameters() if ".encoder.layers.0." in n}
    model = apply_strategy(base, "reinit:m=2")
    layers = model.model.encoder.layers
    for layer in layers[1:]:
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):
                fan_out, fan_in = module.weight.shape
                xavier_std = (2.0 / (fan_in + fan_out)) ** 0.5
                assert module.weight.std().item() == pytest.approx(xavier_std, rel=0.05)
                assert module.weight.mean().abs().item() < 0.1 * xavier_std
                if module.bias is not None:
                    assert torch.count_nonzero(module.bias) == 0
            elif isinstance(module, torch.nn.LayerNorm):
                assert torch.all(module.weight == 1) and torch.count_nonzero(module.bias) == 0
    for name, parameter in model.named_parameters():  # the layer below is untouched and frozen
        if name in bottom:
            assert torch.equal(parameter, bottom[name]) and not parameter.requires_grad


def test_adapter_top_p_places_encoder_adapters_in_the_top_layers_only():
    model = apply_strategy(tiny_whisper(encoder_layers=4, decoder_layers=3), "adapter:d=8,encoder_layers=top-2")
    encoder_with = [i for i, layer in enumerate(model.model.encoder.layers) if hasattr(layer, "adapter")]
    decoder_with = [i for i, layer in enumerate(model.model.decoder.layers) if hasattr(layer, "adapter")]
    assert encoder_with == [2, 3]
    assert decoder_with == [0, 1, 2]
    up = model.model.encoder.layers[3].adapter.up
    assert torch.count_nonzero(up.weight) == 0 and torch.count_nonzero(up.bias) == 0
    assert model.model.encoder.layers[3].adapter.down.weight.shape == (8, 32)


def test_adapter_top_p_larger_than_the_encoder_is_an_error():
    with pytest.raises(AsrtuneError, match="top-5, but the encoder has only 2 layers"):
        apply_strategy(tiny_whisper(), "adapter:encoder_layers=top-5")


def test_freeze_more_layers_than_the_encoder_has_is_an_error():
    with pytest.raises(AsrtuneError, match="freeze:n=3, but the encoder has only 2 layers"):
        apply_strategy(tiny_whisper(), "freeze:n=3")


def test_adapters_are_not_put_into_layers_an_earlier_strategy_froze():
    with pytest.raises(AsrtuneError, match="encoder.layers.0 is frozen by an earlier strategy"):
        apply_strategy(tiny_whisper(), "freeze:n=1+adapter")
    model = apply_strategy(tiny_whisper(), "freeze:n=1+adapter:encoder_layers=top-1")
    assert not hasattr(model.model.encoder.layers[0], "adapter") and hasattr(model.model.encoder.layers[1], "adapter")


def test_composition_applies_left_to_right_and_additions_commute():
    lora_then_adapter = apply_strategy(_base(), "lora:r=4+adapter:d=8")
    adapter_then_lora = apply_strategy(_base(), "adapter:d=8+lora:r=4")
    names = lambda m: {_plain(n).replace("base_model.model.", "") for n, p in m.named_parameters() if p.requires_grad}  # noqa: E731
    assert names(lora_then_adapter) == names(adapter_then_lora)
    frozen_first = apply_strategy(_base(), "freeze:n=2+lora:r=4")
    lora_modules = {n.split(".lora_")[0] for n, _ in frozen_first.named_parameters() if ".lora_" in n}
    assert not any(".encoder.layers.0." in n or ".encoder.layers.1." in n for n in lora_modules)
    assert any(".encoder.layers.2." in n for n in lora_modules)


def test_full_leaves_the_encoder_positions_frozen_even_when_loaded_trainable():
    model = _base()
    assert model.model.encoder.embed_positions.weight.requires_grad  # transformers 5 loads it so
    for spec in ("full", "freeze:n=0", "lora"):
        wrapped = apply_strategy(_base(), spec)
        positions = [p for n, p in wrapped.named_parameters() if "encoder.embed_positions" in n]
        assert positions and not positions[0].requires_grad
