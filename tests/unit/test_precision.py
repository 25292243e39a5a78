"""loop.mixed_precision: auto resolves against the hardware; bf16 trains under autocast, evaluates in fp32."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from test_training import make_config

from asrtune.config import load_config
from asrtune.errors import AsrtuneError
from asrtune.models.whisper import whisper_core
from asrtune.strategies import apply_strategy
from asrtune.training.parts import RecipeParts
from asrtune.training.precision import accelerator_mixed_precision, native_bf16, resolve_mixed_precision
from asrtune.training.recipe import train


@pytest.mark.parametrize("cuda, cuda_bf16, amx, avx512_bf16, expected", [
    (False, False, True, False, "bf16"),   # a CPU with AMX tiles
    (False, False, False, True, "no"),     # AVX512-BF16 without AMX (AMD Zen 4): fp32 unless asked
    (False, False, False, False, "no"),    # any other CPU: bf16 autocast would be emulated, slower than fp32
    (True, True, False, False, "bf16"),    # Ampere or later
    (True, False, True, True, "no"),       # an older GPU: the CPU does not matter, training runs on the GPU
])
def test_auto_picks_bf16_only_where_the_hardware_multiplies_it_natively(monkeypatch, cuda, cuda_bf16, amx,
                                                                       avx512_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: cuda_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert native_bf16() == (expected == "bf16")
    assert resolve_mixed_precision("auto") == expected


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("requested", ["no", "fp16", "bf16"])
def test_an_explicit_precision_is_kept_whatever_the_hardware(requested, native, monkeypatch):
    import asrtune.training.precision as precision

    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    assert resolve_mixed_precision("auto") == ("bf16" if native else "no")  # the hardware decides auto only
    assert resolve_mixed_precision(requested) == requested


def test_only_fp16_goes_through_accelerates_scaler():
    assert [accelerator_mixed_precision(p) for p in ("no", "bf16", "fp16")] == ["no", "no", "fp16"]


def test_auto_is_the_default_and_unknown_values_are_refused():
    assert load_config(None, []).loop.mixed_precision == "auto"
    with pytest.raises(AsrtuneError, match="auto, no, fp16, bf16"):
        load_config(None, ["loop.mixed_precision=fp8"])


def test_bf16_trains_under_autocast_and_evaluates_in_fp32(tiny_model_dir, tiny_data, tmp_path):
    seen: list[tuple[bool, bool]] = []  # (decoder in training mode, autocast on) for every decoder call
    def recording(model, spec):
        model = apply_strategy(model, spec)
        whisper_core(model).decoder.register_forward_hook(
            lambda module, args, output: seen.append((module.training, torch.is_autocast_enabled("cpu"))))
        return model

    config = make_config(tiny_model_dir, tiny_data, max_steps=2, eval_every=2)
    config = dataclasses.replace(config, loop=dataclasses.replace(config.loop, mixed_precision="bf16"))
    results = train(config, tmp_path / "run", progress=False, parts=RecipeParts(apply_strategy=recording))
    assert results["mixed_precision"] == "bf16"
    assert json.loads((tmp_path / "run" / "results.json").read_text())["mixed_precision"] == "bf16"
    training = {autocast for is_training, autocast in seen if is_training}
    evaluating = {autocast for is_training, autocast in seen if not is_training}
    assert training == {True} and evaluating == {False}


def test_runs_of_different_precision_share_a_process(tiny_model_dir, tiny_data, tmp_path):
    # accelerate keeps one state per process and refuses a second mixed precision; a sweep may mix them
    config = make_config(tiny_model_dir, tiny_data, max_steps=1, eval_every=1)
    for precision in ("no", "bf16", "no"):
        run = dataclasses.replace(config, loop=dataclasses.replace(config.loop, mixed_precision=precision))
        assert train(run, tmp_path / precision / str(len(list(tmp_path.iterdir()))), progress=False,
                     final_evaluation=False)["mixed_precision"] == precision
