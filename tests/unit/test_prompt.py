"""Prompt tuning (``prompt:n=…``): what trains, how it starts, and that generate sees the same prompt."""

from __future__ import annotations

import pytest
import torch

from asrtune.cli import main
from asrtune.config import RunConfig, save_config
from asrtune.errors import AsrtuneError
from asrtune.inspection import count_parameters, module_counts
from asrtune.runs.load import load_model
from asrtune.strategies import apply_strategy, merge_strategy, parse_spec
from asrtune.models.whisper import whisper_core
from asrtune.strategies.prompt import FREQUENT_TOKENS
from asrtune.runs.load import load_run_model
from asrtune.runs.weights import save_trainable

from conftest import tiny_whisper

SOT, NO_TIMESTAMPS = 50257, 50362


def _model(spec: str = "prompt:n=4", seed: int = 0, **overrides) -> torch.nn.Module:
    model = apply_strategy(tiny_whisper(seed=seed, perturb=0.05, **overrides), spec)
    return model.eval()


def _features(seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 80, 100, generator=torch.Generator().manual_seed(seed))


def _trained(model: torch.nn.Module, scale: float = 0.5) -> torch.nn.Module:
    with torch.no_grad():  # stand in for training: the prompt moves away from its start
        prompt = whisper_core(model).decoder.soft_prompt.weight
        prompt.add_(torch.randn(prompt.shape, generator=torch.Generator().manual_seed(3)) * scale)
    return model


def test_only_n_times_d_model_parameters_train():
    model = _model("prompt:n=6")
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"model.decoder.soft_prompt.weight": 6 * 32}
    assert count_parameters(model)[0] == 6 * 32
    counts = {c.module: c for c in module_counts(model)}  # what `asrtune inspect` prints
    assert counts["decoder.soft_prompt"].trainable == counts["decoder.soft_prompt"].total == 6 * 32


def test_vocab_init_takes_rows_of_frequent_token_embeddings_deterministically():
    model = _model("prompt:n=8")
    prompt = model.model.decoder.soft_prompt.weight.detach()
    table = model.model.decoder.embed_tokens.weight.detach()[:FREQUENT_TOKENS]
    rows = [int(torch.nonzero((table == vector).all(dim=1))[0]) for vector in prompt]
    assert len(set(rows)) == 8  # distinct tokens, each a real row of the table
    assert torch.equal(_model("prompt:n=8").model.decoder.soft_prompt.weight, prompt)  # same draw every time
    random_init = _model("prompt:n=8,init=random").model.decoder.soft_prompt.weight.detach()
    assert not any((table == vector).all(dim=1).any() for vector in random_init)
    assert random_init.std().item() == pytest.approx(model.model.decoder.embed_tokens.weight.std().item(), rel=0.5)


def test_step_zero_is_not_the_base_model_but_logits_keep_the_label_length():
    """Soft prompts are new inputs, so step 0 differs from the pretrained model (unlike lora/adapter)."""
    ids = torch.tensor([[SOT, NO_TIMESTAMPS, 464, 3797]] * 2)
    base = tiny_whisper(seed=0, perturb=0.05).eval()
    with torch.no_grad():
        plain = base(input_features=_features(), decoder_input_ids=ids).logits
        prompted = _model()(input_features=_features(), decoder_input_ids=ids).logits
    assert prompted.shape == plain.shape
    assert not torch.allclose(prompted, plain, atol=1e-4)


def test_the_prompt_shifts_tokens_to_positions_after_it():
    """A prompt of n vectors equals feeding those vectors as embeddings in front, by hand, to the bare decoder."""
    model = _trained(_model("prompt:n=3"))
    decoder = model.model.decoder
    ids = torch.tensor([[SOT, NO_TIMESTAMPS, 464]])
    with torch.no_grad():
        encoded = model.model.encoder(_features(batch=1)).last_hidden_state
        hooked = decoder(input_ids=ids, encoder_hidden_states=encoded).last_hidden_state
        bare = tiny_whisper(seed=0, perturb=0.05).eval().model.decoder
        by_hand = torch.cat([decoder.soft_prompt.weight[None], bare.embed_tokens(ids)], dim=1)
        expected = bare(inputs_embeds=by_hand, encoder_hidden_states=encoded).last_hidden_state[:, 3:]
    torch.testing.assert_close(hooked, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("spec", ["prompt:n=4", "lora:r=4+prompt:n=4"])
def test_cached_generation_sees_the_same_prompt_as_teacher_forcing(spec):
    model = _trained(_model(spec, seed=1))
    features = _features(5)
    options = dict(max_new_tokens=6, do_sample=False, num_beams=1, return_dict_in_generate=True, output_scores=True)
    with torch.no_grad():
        cached = model.generate(input_features=features, use_cache=True, **options)
        uncached = model.generate(input_features=features, use_cache=False, **options)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.scores, uncached.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # The last score came from feeding every earlier token: one teacher-forced pass gives the same logits.
    sequences = cached.sequences
    with torch.no_grad():
        forced = model(input_features=features, decoder_input_ids=sequences[:, :-1]).logits[:, -1]
        masked = model(input_features=features, decoder_input_ids=sequences[:, :-1],
                       decoder_attention_mask=torch.ones_like(sequences[:, :-1])).logits[:, -1]
    finite = torch.isfinite(cached.scores[-1])
    torch.testing.assert_close(forced[finite], cached.scores[-1][finite], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(masked, forced, rtol=0, atol=1e-6)


def test_decoding_past_the_decoder_positions_is_a_clear_error():
    model = _model("prompt:n=40", max_target_positions=96)
    with pytest.raises(AsrtuneError, match=r"prompt:n=40: .*keep n \+ prompt tokens \+ max_new_tokens <= 96"):
        with torch.no_grad():
            model.generate(input_features=_features(batch=1), max_new_tokens=90, do_sample=False)


def test_bad_options_and_too_long_prompts_are_errors():
    with pytest.raises(AsrtuneError, match="n must be >= 1"):
        parse_spec("prompt:n=0")
    with pytest.raises(AsrtuneError, match="init must be vocab or random"):
        parse_spec("prompt:init=zeros")
    with pytest.raises(AsrtuneError, match="more than half of the decoder's 96 positions"):
        _model("prompt:n=49", max_target_positions=96)
    assert parse_spec("prompt")[0].n == 16 and parse_spec("prompt:n=8")[0].spec() == "prompt:n=8"


def test_merge_refuses_and_names_both_exports_and_the_alternative():
    with pytest.raises(AsrtuneError, match=r"soft prompt.*hf or ct2.*lora"):
        merge_strategy(_model(), "prompt:n=4")


def _fake_run(base_dir, run_dir, spec="prompt:n=4"):
    model = _trained(apply_strategy(load_model(str(base_dir)).model, spec)).eval()
    run_dir.mkdir(parents=True)
    save_config(RunConfig(model=str(base_dir), strategy=spec), run_dir / "config.yaml")
    (run_dir / "checkpoints" / "best").mkdir(parents=True)
    save_trainable(model, run_dir / "checkpoints" / "best", {"step": 1})
    return model


@pytest.mark.parametrize("target", ["hf", "ct2"])
def test_export_refuses_a_prompt_run_with_the_reason(tiny_model_dir, tmp_path, capsys, target):
    _fake_run(tiny_model_dir, tmp_path / "run")
    code = main(["export", str(tmp_path / "run"), "--to", target, "--out", str(tmp_path / "out")])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert "soft prompt" in line and "transcribe" in line and "lora" in line
    assert not (tmp_path / "out").exists()


def test_a_prompt_run_reloads_with_its_trained_vectors(tiny_model_dir, tmp_path):
    trained = _fake_run(tiny_model_dir, tmp_path / "run")
    loaded = load_run_model(tmp_path / "run").model
    assert torch.equal(loaded.model.decoder.soft_prompt.weight, trained.model.decoder.soft_prompt.weight)


def test_soft_prompt_length_is_what_long_form_decoding_leaves_room_for():
    from asrtune.strategies.prompt import soft_prompt_length

    assert soft_prompt_length(_model("prompt:n=5")) == 5
    assert soft_prompt_length(tiny_whisper()) == 0


def test_the_prompt_sweep_grid_compares_prompt_with_lora_and_adapters():
    from pathlib import Path

    from asrtune.sweep.config import load_sweep

    grid = load_sweep(Path(__file__).resolve().parents[2] / "configs" / "sweep-prompt.yaml")
    kinds = {s.spec.split(":")[0] for s in grid.strategies}
    assert kinds == {"prompt", "lora", "adapter"}
    for entry in grid.strategies:
        assert parse_spec(entry.spec)


def test_long_form_transcription_with_a_soft_prompt_stays_within_the_decoder_positions(tiny_model_dir, tmp_path):
    """Long-form generate fills up to the decoder's 448 positions when not told otherwise; the n prompt
    positions come off that."""
    from conftest import write_tone

    from asrtune.inference import TranscribeOptions, transcribe_files
    from asrtune.models.load import LoadedModel

    write_tone(tmp_path / "tone.wav", seconds=2.5, freq=300, seed=1)
    base = load_model(str(tiny_model_dir))
    model = _trained(apply_strategy(base.model, "prompt:n=8")).eval()
    model.generation_config.suppress_tokens = list(range(50363, 51864))  # no timestamps: windows run long
    model.generation_config.max_length = 448  # as Whisper's own generation configs
    loaded = LoadedModel(model=model, processor=base.processor, source="tiny", strategy="prompt:n=8")
    options = TranscribeOptions(temperatures=(0.0,), compression_ratio_threshold=None, logprob_threshold=None,
                                no_speech_threshold=None)
    (transcript,), _ = transcribe_files(loaded, [tmp_path / "tone.wav"], options, progress=False)
    assert transcript.segments
