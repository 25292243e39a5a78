"""``language: new:xx,init=yy``: a new language token on a tiny random multilingual Whisper."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperTokenizerFast

from conftest import make_processor, tiny_whisper, write_tiny_manifest
from asrtune.config import DataConfig, LoopConfig, RunConfig, config_from_dict, config_to_dict
from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import read_manifest
from asrtune.errors import AsrtuneError
from asrtune.evaluation.decode import decode_dataset
from asrtune.export.ct2 import export_ct2
from asrtune.export.merge import export_hf
from asrtune.languages import parse_new_language
from asrtune.models.load import LoadedModel
from asrtune.runs.load import load_model
from asrtune.models.new_language import add_language_token
from asrtune.training.recipe import train

LANGS = ("en", "kk", "ru")


def multilingual_processor():
    """The test tokenizer plus its 1501 timestamp tokens, so it is as long as the model's vocabulary."""
    processor = make_processor()
    processor.tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)], special_tokens=False)
    return processor


def tiny_multilingual(seed: int = 0):
    processor = multilingual_processor()
    model = tiny_whisper(seed=seed, perturb=0.02, vocab_size=len(processor.tokenizer))
    tokenizer = processor.tokenizer
    model.generation_config.is_multilingual = True
    model.generation_config.lang_to_id = {f"<|{c}|>": tokenizer.convert_tokens_to_ids(f"<|{c}|>") for c in LANGS}
    return model, processor


@pytest.fixture(scope="module")
def multilingual_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-multilingual")
    model, processor = tiny_multilingual()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _prompt(tokenizer, language: str) -> torch.Tensor:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in
           ("<|startoftranscript|>", f"<|{language}|>", "<|transcribe|>", "<|notimestamps|>")]
    return torch.tensor([ids + [464, 3797]])


def _logits(model, decoder_ids):
    features = torch.randn(1, 80, 100, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(input_features=features, decoder_input_ids=decoder_ids).logits


def test_the_spec_parses_and_the_config_round_trips():
    assert parse_new_language("new:ky,init=kk") == ("ky", "kk")
    assert parse_new_language("kk") is None
    config = RunConfig(language="new:ky, init=Kazakh")
    assert (config.language, config.language_init) == ("ky", "kk")
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(config)))) == config
    with pytest.raises(AsrtuneError, match="new:CODE,init=RELATED"):
        RunConfig(language="new:ky")
    with pytest.raises(AsrtuneError, match="another language"):
        RunConfig(language="new:kk,init=kk")
    with pytest.raises(AsrtuneError, match="needs a language"):
        RunConfig(language_init="kk")


def test_the_new_token_starts_as_a_copy_of_the_related_one():
    model, processor = tiny_multilingual()
    before = _logits(model, _prompt(processor.tokenizer, "kk"))
    rows = model.get_input_embeddings().weight.shape[0]
    new_id = add_language_token(model, processor, "ky", "kk")
    assert new_id == rows and model.config.vocab_size == rows + 1
    assert model.proj_out.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # still tied
    assert processor.tokenizer.convert_tokens_to_ids("<|ky|>") == new_id
    assert model.generation_config.lang_to_id["<|ky|>"] == new_id and new_id in model.generation_config.suppress_tokens
    after = _logits(model, _prompt(processor.tokenizer, "ky"))
    kk = processor.tokenizer.convert_tokens_to_ids("<|kk|>")
    assert torch.allclose(after[..., :rows], before, atol=1e-5)  # step 0: prompts exactly as <|kk|> does
    assert torch.allclose(after[..., new_id], after[..., kk], atol=1e-6)  # one more class, kk's twin


def test_clear_errors_for_an_unknown_init_an_existing_code_and_english_only_models():
    model, processor = tiny_multilingual()
    with pytest.raises(AsrtuneError, match="'sw' is not a language of this model"):
        add_language_token(model, processor, "ky", "sw")
    with pytest.raises(AsrtuneError, match="already has <\\|ru\\|>"):
        add_language_token(model, processor, "ru", "kk")
    english = tiny_whisper()
    with pytest.raises(AsrtuneError, match="English-only"):
        add_language_token(english, make_processor(), "ky", "en")


@pytest.fixture(scope="module")
def ky_run(multilingual_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ky-data")
    texts = ["salam dos", "jakshy kun", "rahmat", "kel bul jakka"]
    train_manifest = write_tiny_manifest(folder, texts, "train.jsonl", language="ky")
    eval_manifest = write_tiny_manifest(folder, texts[:2], "eval.jsonl", language="ky")
    config = RunConfig(model=str(multilingual_dir), strategy="decoder", language="new:ky,init=kk", seed=1,
                       data=DataConfig(train=str(train_manifest), eval=str(eval_manifest)),
                       loop=LoopConfig(max_steps=2, batch_size=2, eval_every=2, eval_batch_size=4,
                                       max_new_tokens=4, warmup_ratio=0.0, num_workers=0))
    run_dir = tmp_path_factory.mktemp("runs") / "ky"
    train(config, run_dir, progress=False)
    return run_dir, eval_manifest


def test_a_run_keeps_its_new_language_and_evaluates_with_it(ky_run):
    run_dir, eval_manifest = ky_run
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (saved["language"], saved["language_init"]) == ("ky", "kk")
    loaded = load_model(str(run_dir))
    new_id = loaded.processor.tokenizer.convert_tokens_to_ids("<|ky|>")
    assert loaded.generation_config.lang_to_id["<|ky|>"] == new_id == loaded.model.config.vocab_size - 1
    assert loaded.language_kwargs("ky") == {"language": "<|ky|>", "task": "transcribe"}
    assert loaded.language_kwargs("kk") == {"language": "kk", "task": "transcribe"}
    dataset = FeatureDataset(read_manifest(eval_manifest), loaded.processor, multilingual=True, progress=False)
    assert dataset.labels[0][0] == new_id  # the training target starts <|ky|> <|transcribe|> ...
    seen = []
    hook = loaded.model.model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"][0].tolist()), with_kwargs=True)
    try:
        decoded = decode_dataset(loaded, dataset, language=None, batch_size=2, max_new_tokens=3, progress=False)
    finally:
        hook.remove()
    assert len(decoded.hypotheses) == 2
    assert [ids for ids in seen if len(ids) > 1][0][1] == new_id  # generate was prompted with <|ky|>


def test_hf_and_ct2_exports_keep_the_new_token(ky_run, tmp_path):
    run_dir, _ = ky_run
    run_model = load_model(str(run_dir))
    new_id = run_model.model.config.vocab_size - 1
    hf = export_hf(str(run_dir), tmp_path / "hf")
    plain = WhisperForConditionalGeneration.from_pretrained(hf)
    assert plain.config.vocab_size == new_id + 1
    assert WhisperTokenizerFast.from_pretrained(hf).convert_tokens_to_ids("<|ky|>") == new_id
    assert GenerationConfig.from_pretrained(hf).lang_to_id["<|ky|>"] == new_id
    prompt = _prompt(run_model.processor.tokenizer, "ky")
    assert torch.allclose(_logits(plain, prompt), _logits(run_model.model, prompt), atol=1e-5)
    back = load_model(str(hf))  # asrtune decodes the export in the new language
    assert back.language_kwargs("ky")["language"] == "<|ky|>"

    check = export_ct2(str(run_dir), tmp_path / "ct2", quantization="float32")
    assert check is not None and check.identical, check
    config = json.loads((tmp_path / "ct2" / "config.json").read_text())
    assert new_id in config["lang_ids"]
    reimported = load_model(str(tmp_path / "ct2"))  # asrtune's own CTranslate2 reader
    assert reimported.generation_config.lang_to_id["<|ky|>"] == new_id
    assert torch.allclose(_logits(reimported.model, prompt), _logits(run_model.model, prompt), atol=1e-4)


def test_ctranslate2_decodes_with_the_new_token(ky_run, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2")
    run_dir, _ = ky_run
    export_ct2(str(run_dir), tmp_path / "ct2", quantization="float32")
    tokenizer = WhisperTokenizerFast.from_pretrained(tmp_path / "ct2")
    model = ctranslate2.models.Whisper(str(tmp_path / "ct2"))
    prompt = ["<|startoftranscript|>", "<|ky|>", "<|transcribe|>", "<|notimestamps|>"]
    features = ctranslate2.StorageView.from_array(torch.randn(1, 80, 100).numpy())
    result = model.generate(features, [prompt], max_length=6)
    assert result[0].sequences_ids  # decodes; the language token came from the exported vocabulary
    assert tokenizer.convert_tokens_to_ids("<|ky|>") == load_model(str(run_dir)).model.config.vocab_size - 1


def test_a_model_that_already_has_the_language_refuses_to_add_it_again(ky_run, tmp_path):
    run_dir, _ = ky_run
    hf = export_hf(str(run_dir), tmp_path / "hf")
    loaded = load_model(str(hf))
    with pytest.raises(AsrtuneError, match="already has <\\|ky\\|>; write language: ky"):
        add_language_token(loaded.model, loaded.processor, "ky", "kk")
    assert isinstance(loaded, LoadedModel)


def test_transcribe_forces_the_new_language_token(ky_run, tmp_path):
    from conftest import write_tone
    from asrtune.inference.longform import TranscribeOptions, transcribe_files

    run_dir, _ = ky_run
    loaded = load_model(str(run_dir))
    new_id = loaded.model.config.vocab_size - 1
    loaded.model.generation_config.suppress_tokens = list(range(50363, new_id + 1))  # no timestamps: one segment
    audio = tmp_path / "a.wav"
    write_tone(audio, seconds=0.8, freq=300.0, seed=2)
    seen = []
    hook = loaded.model.model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"][0].tolist()), with_kwargs=True)
    options = TranscribeOptions(language="ky", temperatures=(0.0,), compression_ratio_threshold=None,
                                logprob_threshold=None, no_speech_threshold=None, max_new_tokens=4)
    try:
        (transcript,), _ = transcribe_files(loaded, [audio], options, progress=False)
    finally:
        hook.remove()
    assert transcript.language == "ky"
    assert new_id in [ids for ids in seen if len(ids) > 1][0]
