"""Big models fit: gradient checkpointing (same losses, layers recomputed), lean optimizers (trained, resumed
bit-identically, refused before loading where the machine cannot run them), quantization's config checks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import read_jsonl, save_tiny

from asrtune.config import DataConfig, LoopConfig, OptimConfig, RunConfig
from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import read_manifest
from asrtune.errors import AsrtuneError
from asrtune.models.family import family_of
from asrtune.runs.load import load_model
from asrtune.strategies import apply_strategy
from asrtune.training.parts import RecipeParts
from asrtune.training.recipe import train
from asrtune.training.recompute import enable_gradient_checkpointing
from asrtune.training.step import TrainingForward

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _config(model_dir, data, strategy="full", optim=None, **loop) -> RunConfig:
    settings = dict(max_steps=4, batch_size=2, eval_every=100, eval_batch_size=4, max_new_tokens=4,
                    log_every=1, warmup_ratio=0.0, num_workers=0, mixed_precision="no", eval_at_start=False)
    settings.update(loop)
    return RunConfig(model=str(model_dir), strategy=strategy, seed=1,
                     data=DataConfig(train=str(data[0]), eval=str(data[1])),
                     optim=optim or OptimConfig(learning_rate=1e-3), loop=LoopConfig(**settings))


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


# --- gradient checkpointing --------------------------------------------------------------------------------


def _step(model, batch):
    """Loss and every trainable gradient of one forward + backward of the family's training forward."""
    model.train()
    forward = TrainingForward(model)
    loss, _ = forward(**{k: v for k, v in batch.items() if k not in ("index", "frames")})
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("which, strategy", [("whisper", "full"), ("whisper", "lora:r=8"),
                                             ("whisper", "freeze:n=1+adapter:d=8,encoder_layers=top-1"),
                                             ("qwen2_audio", "projector+lora:r=8,alpha=32")])
def test_checkpointing_recomputes_every_layer_and_keeps_loss_and_gradients(which, strategy, tiny_model_dir,
                                                                            tiny_qwen2_audio_dir, tiny_data):
    model_dir = tiny_model_dir if which == "whisper" else tiny_qwen2_audio_dir
    loaded = load_model(str(model_dir))
    dataset = FeatureDataset(read_manifest(tiny_data[0])[:2], loaded.processor, multilingual=False)
    batch = family_of(loaded.model).collate([dataset[0], dataset[1]], 8, loaded.processor)
    model = apply_strategy(loaded.model, strategy)
    torch.manual_seed(0)
    plain_loss, plain_grads = _step(model, batch)

    calls = []
    layers = [m for m in model.modules() if isinstance(m, family_of(model).layer_classes(model))]
    top = layers[-1]  # the last decoder / LLM block: trains (or passes gradients on) in every strategy here
    # inside the block: transformers checkpoints a layer's forward, so hooks on the block itself fire once
    top.self_attn.register_forward_pre_hook(lambda module, args: calls.append(1))
    assert enable_gradient_checkpointing(model) == len(layers) >= 4
    torch.manual_seed(0)
    loss, grads = _step(model, batch)
    assert len(calls) == 2  # the forward, then the recomputation in backward
    assert loss.item() == pytest.approx(plain_loss.item(), rel=1e-6)
    assert grads.keys() == plain_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    model.eval()  # decoding is untouched: no recomputation without gradients
    calls.clear()
    with torch.no_grad():
        TrainingForward(model)(**{k: v for k, v in batch.items() if k not in ("index", "frames")})
    assert len(calls) == 1


def test_a_run_with_checkpointing_has_the_losses_of_one_without(tiny_model_dir, tiny_data, tmp_path):
    plain = _config(tiny_model_dir, tiny_data, "lora:r=8")
    train(plain, tmp_path / "plain", progress=False, final_evaluation=False)
    loop = dataclasses.replace(plain.loop, gradient_checkpointing=True)
    checkpointed = dataclasses.replace(plain, loop=loop)
    train(checkpointed, tmp_path / "ckpt", progress=False, final_evaluation=False)
    assert _losses(tmp_path / "ckpt") == pytest.approx(_losses(tmp_path / "plain"), rel=1e-5)
    assert len(set(_losses(tmp_path / "plain"))) > 1


# --- optimizers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adafactor", "adamw_8bit"])
def test_an_optimizer_trains_and_resumes_bit_identically(name, tiny_model_dir, tiny_data, tmp_path):
    if name == "adamw_8bit":
        pytest.importorskip("bitsandbytes")
    optim = OptimConfig(name=name, learning_rate=1e-3)
    straight = _config(tiny_model_dir, tiny_data, optim=optim, max_steps=4, save_every=1, schedule="constant")
    train(straight, tmp_path / "straight", progress=False, final_evaluation=False)
    half = dataclasses.replace(straight, loop=dataclasses.replace(straight.loop, max_steps=2))
    train(half, tmp_path / "resumed", progress=False, final_evaluation=False)
    train(straight, tmp_path / "resumed", resume=True, progress=False, final_evaluation=False)
    losses = _losses(tmp_path / "straight")
    assert _losses(tmp_path / "resumed") == losses  # bit-identical
    assert len(set(losses)) == 4 and losses[-1] < losses[0]


def test_adafactor_keeps_factored_state_for_matrices(tiny_model_dir, tiny_data, tmp_path):
    from asrtune.training.recipe import Recipe

    optim = OptimConfig(name="adafactor", learning_rate=1e-3)
    config = _config(tiny_model_dir, tiny_data, optim=optim, max_steps=1)
    recipe = Recipe(config, tmp_path / "run", progress=False, final_evaluation=False)
    recipe.train()
    assert isinstance(recipe.optimizer.optimizer, torch.optim.Adafactor)
    state_bytes = sum(t.numel() * t.element_size() for s in recipe.optimizer.state.values()
                      for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    params_bytes = sum(p.numel() * 4 for p in recipe.params)
    assert state_bytes < 0.1 * params_bytes  # AdamW's would be 2x


def test_a_choice_this_machine_cannot_run_refuses_before_the_model_loads(tiny_model_dir, tiny_data, tmp_path):
    def never(config):
        raise AssertionError("the model was loaded")

    config = _config(tiny_model_dir, tiny_data, optim=OptimConfig(name="paged_adamw_8bit"))
    with pytest.raises(AsrtuneError, match="paged_adamw_8bit .*use adamw_8bit"):
        train(config, tmp_path / "run", progress=False, parts=RecipeParts(load_start=never))


def test_optimizer_and_quantization_are_checked_when_the_config_is_read():
    with pytest.raises(AsrtuneError, match="optim.name 'sgd'"):
        OptimConfig(name="sgd")
    with pytest.raises(AsrtuneError, match="trains pretrained weights"):
        RunConfig(strategy="freeze:n=2", quantization="4bit")
    with pytest.raises(AsrtuneError, match="allowed: 4bit, 8bit"):
        RunConfig(strategy="lora", quantization="2bit")
    assert RunConfig(strategy="freeze:n=2+lora:r=8", quantization="8bit").quantization == "8bit"


def test_resume_refuses_another_optimizer(tiny_model_dir, tiny_data, tmp_path):
    config = _config(tiny_model_dir, tiny_data, max_steps=1)
    train(config, tmp_path / "run", progress=False, final_evaluation=False)
    other = dataclasses.replace(config, optim=OptimConfig(name="adafactor", learning_rate=1e-3))
    with pytest.raises(AsrtuneError, match="optim.name adamw"):
        train(other, tmp_path / "run", resume=True, progress=False, final_evaluation=False)


# --- quantized base ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_lora_on_a_quantized_base_trains_and_exports_a_plain_dequantized_model(quantization, tiny_data,
                                                                              tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import WhisperForConditionalGeneration

    from asrtune.export.merge import export_hf

    # bitsandbytes' CPU 4-bit inference kernel packs weights in blocks of 64 inputs: a model 64 wide
    model_dir = save_tiny(tmp_path / "model", seed=0, perturb=0.02, d_model=64, encoder_ffn_dim=128,
                          decoder_ffn_dim=128)
    config = dataclasses.replace(_config(model_dir, tiny_data, "lora:r=8", max_steps=3),
                                 quantization=quantization)
    train(config, tmp_path / "run", progress=False, final_evaluation=False)
    losses = _losses(tmp_path / "run")
    assert len(set(losses)) == 3 and all(math.isfinite(x) for x in losses)
    loaded = load_model(str(tmp_path / "run"))  # the run reloads on its quantized base
    layer = loaded.model.base_model.model.model.encoder.layers[0].fc1
    assert "bit" in type(layer).__name__.lower()  # Linear4bit / Linear8bitLt
    export_hf(str(tmp_path / "run"), tmp_path / "export")
    plain = WhisperForConditionalGeneration.from_pretrained(tmp_path / "export")
    assert type(plain.model.encoder.layers[0].fc1) is torch.nn.Linear
    assert getattr(plain.config, "quantization_config", None) is None
