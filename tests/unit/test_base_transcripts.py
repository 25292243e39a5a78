"""The base model's transcripts are reused only when they were decoded exactly as the tuned model
will be: same utterances and every decoding setting (model, max new tokens, prompt, language, task)."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

import asrtune.training.evidence as sets_module
from asrtune.config import config_from_dict
from asrtune.data.manifest import Utterance
from asrtune.evaluation.decode import scoring_language
from asrtune.evaluation.forgetting import Transcripts
from asrtune.training.evidence import TARGET, EvalSet, base_transcripts, decoding_key


def _sets(texts=("hello world", "good morning")) -> dict[str, EvalSet]:
    utterances = [Utterance(id=f"u{i}", audio=f"/a{i}.wav", text=t) for i, t in enumerate(texts)]
    return {"eval": EvalSet("eval", TARGET, SimpleNamespace(utterances=utterances))}


@pytest.fixture
def decoder(monkeypatch):
    """decode_sets stubbed: records the settings of every decode, returns one hypothesis per utterance."""
    calls = []

    def decode_sets(model, missing, config, **kwargs):
        calls.append((config.loop.max_new_tokens, config.language, config.task))
        return {name: Transcripts([u.id for u in item.dataset.utterances], [u.text for u in item.dataset.utterances],
                                  [f"hyp@{config.loop.max_new_tokens}"] * len(item.dataset.utterances),
                                  scoring_language(item.dataset, config.language))
                for name, item in missing.items()}

    monkeypatch.setattr(sets_module, "decode_sets", decode_sets)
    monkeypatch.setattr(sets_module, "load_start_model", lambda config: SimpleNamespace(model=None))
    return calls


def _config(**loop):
    return config_from_dict({"model": "bundled:tiny.en", "loop": loop})


def test_stored_transcripts_decoded_with_another_max_new_tokens_are_decoded_again(decoder, tmp_path):
    path = tmp_path / "base_transcripts.json"
    first = base_transcripts(_config(max_new_tokens=8), _sets(), path)
    assert decoder == [(8, None, "transcribe")] and first["eval"].hypotheses == ("hyp@8", "hyp@8")
    base_transcripts(_config(max_new_tokens=8), _sets(), path)  # same settings: reused
    assert len(decoder) == 1
    # The old key (ids and texts only) reused the 8-token transcripts here: the base would have been
    # decoded with a shorter cap than the tuned model it is compared with.
    again = base_transcripts(_config(max_new_tokens=200), _sets(), path)
    assert decoder[-1] == (200, None, "transcribe") and again["eval"].hypotheses == ("hyp@200", "hyp@200")
    saved = json.loads(path.read_text())["sets"]["eval"]
    assert json.loads(saved["decoding"])["max_new_tokens"] == 200


@pytest.mark.parametrize("change", [
    dict(language="sw"),
    dict(task="translate"),
    dict(model="bundled:base"),
])
def test_every_decoding_setting_is_in_the_key(decoder, tmp_path, change):
    path = tmp_path / "base_transcripts.json"
    config = _config(max_new_tokens=8)
    base_transcripts(config, _sets(), path)
    changed = dataclasses.replace(config, **change)
    assert decoding_key(changed) != decoding_key(config)
    base_transcripts(changed, _sets(), path)
    assert len(decoder) == 2


def test_given_transcripts_are_used_only_under_the_same_key(decoder, tmp_path):
    # A sweep hands every strategy the base transcripts it decoded with the first strategy's settings.
    given = base_transcripts(_config(max_new_tokens=8), _sets(), tmp_path / "sweep.json")
    assert len(decoder) == 1
    base_transcripts(_config(max_new_tokens=8), _sets(), tmp_path / "run1.json", given=given)
    assert len(decoder) == 1  # same settings: the sweep's decode is reused
    other = base_transcripts(_config(max_new_tokens=64), _sets(), tmp_path / "run2.json", given=given)
    assert len(decoder) == 2 and other["eval"].hypotheses == ("hyp@64", "hyp@64")


def test_changed_utterances_are_still_decoded_again(decoder, tmp_path):
    path = tmp_path / "base_transcripts.json"
    base_transcripts(_config(), _sets(), path)
    base_transcripts(_config(), _sets(("hello world", "good evening")), path)
    assert len(decoder) == 2


def test_transcripts_without_a_key_are_not_trusted(decoder, tmp_path):
    path = tmp_path / "base_transcripts.json"
    base_transcripts(_config(), _sets(), path)
    data = json.loads(path.read_text())
    del data["sets"]["eval"]["decoding"]  # written before the key existed
    path.write_text(json.dumps(data))
    base_transcripts(_config(), _sets(), path)
    assert len(decoder) == 2
