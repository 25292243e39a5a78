"""Export: merged HF folders and CTranslate2 folders, on the tiny random Whisper."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperProcessor

from asrtune.cli import main
from asrtune.config import RunConfig, save_config
from asrtune.errors import AsrtuneError
from asrtune.export.ct2 import export_ct2
from asrtune.export.merge import export_hf, load_merged
from asrtune.models.whisper import deployable_generation_config
from asrtune.runs.load import load_model
from asrtune.strategies import STRATEGIES, Strategy, apply_strategy
from asrtune.runs.weights import save_trainable

SOT, NO_TIMESTAMPS = 50257, 50362


def _logits(model) -> torch.Tensor:
    features = torch.randn(1, 80, 100, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        return model(input_features=features, decoder_input_ids=torch.tensor([[SOT, NO_TIMESTAMPS, 464]])).logits


def _fake_run(base_dir, run_dir, spec="lora:r=2,alpha=4", seed=0):
    """A run folder whose best checkpoint holds random (non-zero) trained parameters."""
    model = apply_strategy(load_model(str(base_dir)).model, spec)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    model.eval()
    run_dir.mkdir(parents=True)
    save_config(RunConfig(model=str(base_dir), strategy=spec), run_dir / "config.yaml")
    (run_dir / "checkpoints" / "best").mkdir(parents=True)
    save_trainable(model, run_dir / "checkpoints" / "best", {"step": 1})
    return model


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("asrtune: error: "), err
    return err[0]


def test_hf_export_of_a_plain_model_loads_in_plain_transformers(tiny_model_dir, tmp_path):
    out = export_hf(str(tiny_model_dir), tmp_path / "hf")
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "preprocessor_config.json", "asrtune_export.json"} <= names
    reloaded = WhisperForConditionalGeneration.from_pretrained(out)
    original = load_model(str(tiny_model_dir)).model
    assert torch.equal(_logits(reloaded), _logits(original))
    processor = WhisperProcessor.from_pretrained(out)
    assert processor.feature_extractor.chunk_length == 1 and processor.tokenizer.eos_token_id == 50256
    assert json.loads((out / "asrtune_export.json").read_text())["format"] == "hf"


def test_hf_export_of_a_lora_run_is_merged_and_matches_the_run(tiny_model_dir, tmp_path):
    trained = _fake_run(tiny_model_dir, tmp_path / "run")
    out = export_hf(str(tmp_path / "run"), tmp_path / "hf")
    reloaded = WhisperForConditionalGeneration.from_pretrained(out)
    assert not any("lora" in name for name in reloaded.state_dict())
    assert torch.allclose(_logits(reloaded), _logits(trained), atol=1e-5)
    assert not torch.allclose(_logits(reloaded), _logits(load_model(str(tiny_model_dir)).model), atol=1e-3)
    assert json.loads((out / "asrtune_export.json").read_text())["strategy"] == "lora:r=2,alpha=4"


def test_generation_config_survives_the_hf_export(tmp_path):
    from conftest import make_processor, tiny_whisper

    model = tiny_whisper(perturb=0.02)
    model.generation_config.suppress_tokens = [1, 2, 7]
    model.generation_config.begin_suppress_tokens = [220, 50256]
    model.generation_config.alignment_heads = [[1, 0], [1, 1]]
    model.save_pretrained(tmp_path / "src")
    make_processor().save_pretrained(tmp_path / "src")
    out = export_hf(str(tmp_path / "src"), tmp_path / "hf")
    saved = GenerationConfig.from_pretrained(out)
    assert saved.no_timestamps_token_id == NO_TIMESTAMPS and saved.decoder_start_token_id == SOT
    assert saved.suppress_tokens == [1, 2, 7] and saved.begin_suppress_tokens == [220, 50256]
    assert saved.alignment_heads == [[1, 0], [1, 1]]
    assert saved.task_to_id == {"transcribe": 50358, "translate": 50357} and saved.is_multilingual is False
    assert saved.prev_sot_token_id == 50360  # filled in from the tokenizer: opens the prompt context


def _decoder_prompt(model) -> list[int]:
    """The token ids ``generate`` starts the decoder with (after any language-detection pass)."""
    seen = []
    hook = model.model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"][0].tolist()), with_kwargs=True)
    try:
        model.generate(input_features=torch.randn(1, 80, 100, generator=torch.Generator().manual_seed(0)),
                       max_new_tokens=2)
    finally:
        hook.remove()
    return [ids for ids in seen if len(ids) > 1][0]  # later steps feed one token (KV cache)


def test_english_only_models_lose_their_empty_language_table(tiny_model_dir, tmp_path):
    """An empty ``lang_to_id`` makes transformers insert token 0 after <|startoftranscript|>."""
    model = load_model(str(tiny_model_dir)).model
    model.generation_config.lang_to_id = {}  # what asrtune's CTranslate2 conversion writes for tiny.en
    assert _decoder_prompt(model) == [SOT, 0, NO_TIMESTAMPS]  # the failure this export guards against
    fixed = deployable_generation_config(model.generation_config)
    assert not hasattr(fixed, "lang_to_id") and hasattr(model.generation_config, "lang_to_id")
    model.save_pretrained(tmp_path / "src")
    WhisperProcessor.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "src")
    reloaded = WhisperForConditionalGeneration.from_pretrained(export_hf(str(tmp_path / "src"), tmp_path / "hf"))
    assert _decoder_prompt(reloaded) == [SOT, NO_TIMESTAMPS]
    multilingual = GenerationConfig(is_multilingual=True, lang_to_id={"<|en|>": 50259})
    assert deployable_generation_config(multilingual).lang_to_id == {"<|en|>": 50259}


@dataclass(frozen=True, kw_only=True)
class _ForgetsToMerge(Strategy):
    """A strategy that adds a module but whose ``merge`` forgets to fold or refuse it."""

    name: ClassVar[str] = "forgets"
    kind: ClassVar[str] = "add"
    default_lr: ClassVar[float] = 1e-3

    def apply(self, model, frozen=frozenset()):
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        model.model.decoder.layers[0].adapter = torch.nn.Linear(model.config.d_model, model.config.d_model)
        return model


def test_bottleneck_adapters_fail_with_the_alternative(tiny_model_dir, tmp_path, capsys):
    _fake_run(tiny_model_dir, tmp_path / "run", spec="adapter:d=4")
    code = main(["export", str(tmp_path / "run"), "--to", "ct2", "--out", str(tmp_path / "ct2")])
    line = _error_line(capsys)
    assert code == 2
    assert "adapter" in line and "transcribe" in line and "lora" in line  # says what to do instead
    assert not (tmp_path / "ct2").exists()


def test_a_strategy_that_leaves_extra_modules_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(STRATEGIES._entries, "forgets", _ForgetsToMerge)
    _fake_run(tiny_model_dir, tmp_path / "run", spec="forgets")
    with pytest.raises(AsrtuneError, match=r"added modules .*layers\.0\.adapter"):
        load_merged(str(tmp_path / "run"))


def test_ct2_export_float32_decodes_exactly_like_hf_and_reimports(tiny_model_dir, tmp_path):
    check = export_ct2(str(tiny_model_dir), tmp_path / "ct2", quantization="float32")
    assert check is not None and check.identical and len(check.hf_tokens) >= 5, check
    names = {p.name for p in (tmp_path / "ct2").iterdir()}
    assert {"model.bin", "config.json", "tokenizer.json", "preprocessor_config.json", "asrtune_export.json"} <= names
    assert not any(name.startswith(".") for name in (p.name for p in tmp_path.iterdir()))  # no staging left
    config = json.loads((tmp_path / "ct2" / "config.json").read_text())
    assert {"suppress_ids", "suppress_ids_begin", "alignment_heads", "lang_ids"} <= set(config)
    # HF -> CT2 -> asrtune's own CTranslate2 reader: the same weights come back.
    reimported = load_model(str(tmp_path / "ct2")).model
    assert torch.allclose(_logits(reimported), _logits(load_model(str(tiny_model_dir)).model), atol=1e-5)


def test_ct2_int8_export_is_smaller_and_runs_in_ctranslate2(tiny_model_dir, tmp_path):
    export_ct2(str(tiny_model_dir), tmp_path / "f32", quantization="float32", check=False)
    check = export_ct2(str(tiny_model_dir), tmp_path / "int8", quantization="int8")
    assert check is not None and len(check.ct2_tokens) > 0
    size = {name: (tmp_path / name / "model.bin").stat().st_size for name in ("f32", "int8")}
    assert size["int8"] < 0.5 * size["f32"], size
    assert json.loads((tmp_path / "int8" / "asrtune_export.json").read_text())["quantization"] == "int8"


def test_asrtune_reads_back_an_int8_ct2_export(tiny_model_dir, tmp_path):
    export_ct2(str(tiny_model_dir), tmp_path / "int8", quantization="int8", check=False)
    original = _logits(load_model(str(tiny_model_dir)).model)
    reimported = _logits(load_model(str(tmp_path / "int8")).model)
    assert (reimported - original).abs().max() < 0.1 * original.abs().max()


def test_faster_whisper_loads_the_ct2_export_as_is(tiny_model_dir, tmp_path):
    """Loading only: faster-whisper pads every window to 3000 frames, which the 1 s tiny model refuses;
    the integration tests run it end to end on tiny.en."""
    faster_whisper = pytest.importorskip("faster_whisper")

    export_ct2(str(tiny_model_dir), tmp_path / "ct2", quantization="int8", check=False)
    model = faster_whisper.WhisperModel(str(tmp_path / "ct2"), device="cpu", compute_type="int8", cpu_threads=1)
    # preprocessor_config.json was read (the tiny model's 1 s window), tokenizer.json too (no hub fetch).
    assert model.feature_extractor.chunk_length == 1
    assert model.hf_tokenizer.token_to_id("<|startoftranscript|>") == SOT
    assert model.model.is_multilingual is False


def test_export_refuses_to_clobber_and_rejects_bad_options(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["export", str(tiny_model_dir), "--to", "hf", "--out", str(tmp_path / "mine")]) == 2
    assert "not empty" in _error_line(capsys)
    assert main(["export", str(tiny_model_dir), "--to", "hf", "--out", str(tmp_path / "mine"), "--overwrite"]) == 2
    assert "not an asrtune export" in _error_line(capsys)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert main(["export", str(tiny_model_dir), "--to", "hf", "--out", str(tmp_path / "x"), "--quantization",
                 "int8"]) == 2
    assert "--to ct2 only" in _error_line(capsys)
    with pytest.raises(AsrtuneError, match="unknown quantization"):
        export_ct2(str(tiny_model_dir), tmp_path / "y", quantization="int4")


def test_cli_export_ct2_then_overwrite(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ct2"
    args = ["export", str(tiny_model_dir), "--to", "ct2", "--out", str(out), "--quantization", "float32"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "identical" in printed and "faster_whisper.WhisperModel" in printed
    assert main(args) == 2 and "--overwrite" in _error_line(capsys)
    assert main(args + ["--overwrite", "--no-check"]) == 0
    assert "greedy tokens" not in capsys.readouterr().out
