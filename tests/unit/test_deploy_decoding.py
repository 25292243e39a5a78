"""``deploy`` decoding (faster-whisper's transcribe defaults on transformers' generate), on a scripted tiny Whisper."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_processor, scripted_whisper
from test_loop_guards import EOT, FOUR, NO_TIMESTAMPS, SCRIPT, TWO, _dataset

from asrtune.cli import main
from asrtune.errors import AsrtuneError
from asrtune.evaluation.decode import decode_dataset
from asrtune.models.load import LoadedModel
from asrtune.models.whisper_deploy import FASTER_WHISPER, Candidate, faster_whisper_input, kept_result
from asrtune.training.evidence import decoding_key

NO_CAPTIONS, SOT = 50361, 50257
EIGHT_WAYS = {token: 0.0 for token in range(600, 608)}  # after <|notimestamps|>: 8 equally likely tokens
# kind 2: the no-speech token dominates at <|startoftranscript|> and the hypothesis is unlikely (log 1/8 per
# token, average about -1.04 with end-of-text): silence, as faster-whisper would skip it
SILENT = {SOT: {NO_CAPTIONS: 10.0}, NO_TIMESTAMPS: EIGHT_WAYS}
ENDLESS = {NO_TIMESTAMPS: {TWO: 10.0}, TWO: {FOUR: 10.0}, FOUR: {TWO: 10.0, EOT: -30.0}}  # kind 1: no way out


@pytest.fixture(scope="module")
def processor():
    return make_processor()


def test_faster_whisper_zeroes_the_log_mel_after_the_clip():
    features = torch.full((2, 80, 100), -0.7)
    out = faster_whisper_input(features, [40, 100])
    assert bool((out[0, :, :39] == -0.7).all()) and bool((out[0, :, 39:] == 0).all())
    assert bool((out[1, :, :99] == -0.7).all()) and bool((out[1, :, 99:] == 0).all())
    assert bool((features == -0.7).all())  # the input is left alone


def test_candidates_are_ranked_and_kept_as_faster_whisper_does():
    short = Candidate(tokens=(1, 2), text="a b", total=-3.0, ended=True, temperature=0.0)
    assert short.avg_logprob == -1.0 and short.rank == -1.5  # sum / (tokens + 1); CTranslate2: sum / tokens
    looping = Candidate(tokens=tuple(range(40)), text="ab " * 40, total=-4.0, ended=False, temperature=0.2)
    unlikely = Candidate(tokens=(1,), text="zz", total=-6.0, ended=True, temperature=0.4)
    assert looping.compression_ratio > FASTER_WHISPER.compression_ratio_threshold
    # every temperature failed: the best average under the compression threshold, not the better looping one
    assert kept_result([looping, unlikely], FASTER_WHISPER) is unlikely
    assert kept_result([looping], FASTER_WHISPER) is looping


def test_deploy_falls_back_for_loops_and_drops_silence(tmp_path, processor, caplog):
    """A row that loops at temperature 0 is decoded again by sampling at every temperature (it loops at each:
    the script leaves no way out), the others keep their beam-search hypothesis; a row faster-whisper takes
    for silence transcribes as nothing. Each kind is counted and warned once."""
    loaded = LoadedModel(model=scripted_whisper({0: SCRIPT, 1: ENDLESS, 2: SILENT}), processor=processor,
                         source="scripted")
    dataset = _dataset(tmp_path, processor, [0, 1, 2])
    with caplog.at_level("WARNING", logger="asrtune"):
        decoded = decode_dataset(loaded, dataset, decoding="deploy", max_new_tokens=24, progress=False,
                                 desc="decode test")
    assert decoded.hypotheses == ["one", " ".join(["two four"] * 12), ""]
    assert decoded.flags["temperature_fallbacks"] == [False, True, False]
    assert decoded.flags["loops"] == decoded.flags["hit_max_new_tokens"] == [False, True, False]
    assert decoded.flags["no_speech"] == [False, False, True] and decoded.flags["bias_fallbacks"] == [False] * 3
    assert len(caplog.records) == 4 and all(r.getMessage().startswith("decode test: 1 of 3 hypotheses ")
                                            for r in caplog.records)
    again = decode_dataset(loaded, dataset, decoding="deploy", max_new_tokens=24, progress=False)
    assert again.hypotheses == decoded.hypotheses  # seeded samples: repeatable


def test_deploy_is_whisper_only_and_takes_no_beams(tiny_model_dir, tiny_data, capsys):
    _, manifest = tiny_data
    code = main(["evaluate", str(tiny_model_dir), "--data", str(manifest), "--decoding", "deploy",
                 "--num-beams", "2"])
    assert code == 2 and "takes no --num-beams" in capsys.readouterr().err
    code = main(["evaluate", str(tiny_model_dir), "--data", str(manifest), "--decoding", "deploy",
                 "--max-new-tokens", "4", "--json"])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and record["decoding"] == "deploy" and record["n"] == 3
    assert {"temperature_fallbacks", "no_speech", "loops", "hit_max_new_tokens"} <= set(record)


def test_llm_families_refuse_deploy_decoding(tiny_qwen2_audio_dir, tiny_data):
    from asrtune.data.features import FeatureDataset
    from asrtune.data.manifest import read_manifest
    from asrtune.runs.load import load_model

    loaded = load_model(str(tiny_qwen2_audio_dir))
    dataset = FeatureDataset(read_manifest(tiny_data[1]), loaded.processor, multilingual=False, progress=False)
    with pytest.raises(AsrtuneError, match="Qwen2-Audio models decode greedy, not deploy"):
        decode_dataset(loaded, dataset, decoding="deploy", progress=False)


def test_base_and_tuned_are_compared_under_one_decoding():
    from asrtune.config import RunConfig, config_from_dict

    greedy = config_from_dict({"model": "bundled:tiny.en"})
    deploy = config_from_dict({"model": "bundled:tiny.en", "loop": {"decoding": "deploy"}})
    assert isinstance(greedy, RunConfig) and greedy.loop.decoding == "greedy"
    assert decoding_key(greedy) != decoding_key(deploy)  # stored base transcripts are not reused across decodings
    with pytest.raises(AsrtuneError, match="loop.decoding must be one of greedy, deploy"):
        config_from_dict({"model": "bundled:tiny.en", "loop": {"decoding": "beam"}})


def test_a_run_with_a_decoding_its_family_lacks_fails_before_training(tiny_qwen2_audio_dir, tmp_path):
    from asrtune.config import config_from_dict
    from asrtune.runs.layout import RunDir
    from asrtune.runs.load import load_model
    from asrtune.training.evaluator import RunEvaluator

    config = config_from_dict({"model": str(tiny_qwen2_audio_dir), "loop": {"decoding": "deploy"}})
    evaluator = RunEvaluator(config, RunDir(tmp_path), processes=None, score=None, progress=False)
    with pytest.raises(AsrtuneError, match="loop.decoding: Qwen2-Audio models decode greedy, not deploy"):
        evaluator.setup(load_model(str(tiny_qwen2_audio_dir)), None, pristine=None, device=torch.device("cpu"),
                        final_evaluation=True)
