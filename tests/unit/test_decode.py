"""Batched greedy decoding, scoring against a manifest, predictions files."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GenerationConfig

from conftest import make_processor, read_jsonl, write_tone

from asrtune.data.features import FeatureDataset, collate
from asrtune.data.manifest import Utterance, read_manifest
from asrtune.evaluation.decode import (
    FLAGS,
    decode_dataset,
    evaluate_dataset,
    safe_max_new_tokens,
    transcribe_dataset,
    write_predictions,
)
from asrtune.evaluation.metrics import score
from asrtune.models.load import LoadedModel

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf"]


class ScriptedWhisper(torch.nn.Module):
    """Stands in for Whisper: "transcribes" utterance i (its features are filled with i) as WORDS[i]."""

    def __init__(self, tokenizer, multilingual: bool, words=WORDS, cut=()):
        super().__init__()
        self.cut = set(cut)  # utterances whose hypothesis runs to max_new_tokens without end-of-text
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.generation_config = GenerationConfig(is_multilingual=multilingual)
        self.tokenizer = tokenizer
        self.words = words
        self.calls: list[dict] = []

    def generate(self, input_features, **kwargs):
        indices = [int(round(v)) for v in input_features[:, 0, 0].tolist()]
        self.calls.append(
            {
                "indices": indices,
                "language": kwargs.get("language"),
                "task": kwargs.get("task"),
                "max_new_tokens": kwargs.get("max_new_tokens"),
                "training": self.training,
            }
        )
        cap = kwargs["max_new_tokens"]
        rows = []
        for i in indices:
            text = self.tokenizer.encode(" " + self.words[i], add_special_tokens=False)
            # a cut-off row runs to the cap (distinct tokens: it does not loop); the others end with end-of-text
            text = (text + list(range(1000, 1000 + cap)))[:cap] if i in self.cut else text + [50256]
            rows.append([50257, 50362] + text)
        width = max(map(len, rows))
        # as generate: rows shorter than the longest are padded with end-of-text
        return torch.tensor([row + [50256] * (width - len(row)) for row in rows])


@pytest.fixture(scope="module")
def processor():
    return make_processor()


def _dataset(folder, processor, languages, texts=None):
    rows = []
    for i, language in enumerate(languages):
        audio = folder / f"{i}.wav"
        write_tone(audio, seconds=0.3, freq=300.0 + 50 * i, seed=i)
        rows.append(Utterance(id=f"id{i}", audio=str(audio), text=(texts or WORDS)[i], language=language))
    return _NumberedFeatures(rows, processor, multilingual=False)


class _NumberedFeatures(FeatureDataset):
    """Features that say which row they are: row ``id{i}``'s log-mel is all ``i`` (ScriptedWhisper reads it)."""

    def item_features(self, index):
        return torch.full((80, 100), float(self.utterances[index].id.removeprefix("id")))


def test_batches_group_one_language_and_outputs_keep_dataset_order(tmp_path, processor):
    dataset = _dataset(tmp_path, processor, ["fr", None, "de", "fr", None])
    model = ScriptedWhisper(processor.tokenizer, multilingual=True)
    loaded = LoadedModel(model=model, processor=processor, source="scripted")
    hypotheses = transcribe_dataset(
        loaded, dataset, language="de", task="translate", batch_size=2, max_new_tokens=7, progress=False
    )
    assert hypotheses == WORDS[:5]
    # Rows without a language take the default ("de"); batches hold one language and at most 2 rows.
    assert [(c["indices"], c["language"]) for c in model.calls] == [
        ([1, 2], "de"),
        ([4], "de"),
        ([0, 3], "fr"),
    ]
    assert all(c["task"] == "translate" and c["max_new_tokens"] == 7 for c in model.calls)


def test_english_only_models_get_no_language_argument(tmp_path, processor):
    dataset = _dataset(tmp_path, processor, [None, "en", None])
    model = ScriptedWhisper(processor.tokenizer, multilingual=False)
    loaded = LoadedModel(model=model, processor=processor, source="scripted")
    assert transcribe_dataset(loaded, dataset, batch_size=16, progress=False) == WORDS[:3]
    assert all(c["language"] is None and c["task"] is None for c in model.calls)


def test_decoding_runs_in_eval_mode_and_restores_training_mode(tmp_path, processor):
    dataset = _dataset(tmp_path, processor, [None, None])
    model = ScriptedWhisper(processor.tokenizer, multilingual=False)
    model.train()
    transcribe_dataset(LoadedModel(model=model, processor=processor, source="s"), dataset, progress=False)
    assert [c["training"] for c in model.calls] == [False]
    assert model.training is True


def test_evaluate_picks_the_normaliser_from_the_rows_language(tmp_path, processor):
    # References spelt the British way; the scripted model answers the American way.
    texts = ["colour", "favourite", "harbour"]
    answers = ["color", "favorite", "harbor"]
    english = _dataset(tmp_path / "en", processor, [None, None, None], texts)
    model = ScriptedWhisper(processor.tokenizer, multilingual=False, words=answers)
    loaded = LoadedModel(model=model, processor=processor, source="s")
    evaluation = evaluate_dataset(loaded, english, progress=False)
    assert evaluation.scores.wer == 0.0  # English normaliser: same words
    assert evaluation.hypotheses == answers and evaluation.references == texts
    assert evaluation.ids == ["id0", "id1", "id2"]
    flags = {kind: 0 for kind in FLAGS} | {f"{kind}_ids": [] for kind in FLAGS}
    assert evaluation.summary() == {**evaluation.scores.as_dict(), "decoding": "greedy", "max_new_tokens": 128,
                                    **flags}

    mixed = _dataset(tmp_path / "mixed", processor, ["en", "fr", "en"], texts)
    evaluation = evaluate_dataset(loaded, mixed, progress=False)
    assert evaluation.scores.wer == 1.0  # several languages: the basic normaliser, no spelling table


def test_write_predictions(tmp_path, processor):
    dataset = _dataset(tmp_path, processor, [None, None], ["alpha", "bravo!"])
    loaded = LoadedModel(
        model=ScriptedWhisper(processor.tokenizer, multilingual=False), processor=processor, source="s"
    )
    evaluation = evaluate_dataset(loaded, dataset, progress=False)
    write_predictions(evaluation, tmp_path / "p.jsonl")
    assert read_jsonl(tmp_path / "p.jsonl") == [
        {"id": "id0", "reference": "alpha", "hypothesis": "alpha"},
        {"id": "id1", "reference": "bravo!", "hypothesis": "bravo"},
    ]


def test_real_tiny_model_batched_decoding_matches_generate(tiny_loaded, tiny_data):
    _, eval_manifest = tiny_data
    loaded = tiny_loaded
    dataset = FeatureDataset(
        read_manifest(eval_manifest), loaded.processor, multilingual=False, progress=False
    )
    hypotheses = transcribe_dataset(loaded, dataset, batch_size=2, max_new_tokens=5, progress=False)
    assert len(hypotheses) == len(dataset) == 3
    assert all(isinstance(h, str) for h in hypotheses)
    # The same thing, one utterance at a time, straight through generate.
    expected, generated = [], []
    for i in range(len(dataset)):
        with torch.no_grad():
            ids = loaded.model.generate(
                input_features=collate([dataset[i]])["input_features"],
                max_new_tokens=5,
                do_sample=False,
                num_beams=1,
            )
        expected.append(loaded.processor.tokenizer.decode(ids[0], skip_special_tokens=True).strip())
        generated.append(ids[0].tolist())
    assert hypotheses == expected
    evaluation = evaluate_dataset(loaded, dataset, batch_size=3, max_new_tokens=5, progress=False)
    assert evaluation.hypotheses == expected
    assert evaluation.scores == score([u.text for u in dataset.utterances], expected)
    json.dumps(evaluation.summary())  # plain data
    # The record counts the hypotheses generate cut off at the cap (no end-of-text), one by one above.
    cut = [u.id for u, ids in zip(dataset.utterances, generated) if loaded.processor.tokenizer.eos_token_id not in ids]
    assert evaluation.capped_ids == cut and evaluation.summary()["hit_max_new_tokens"] == len(cut)


def test_hypotheses_cut_off_at_max_new_tokens_are_counted_and_warned(tmp_path, processor, caplog):
    # Utterance 1's hypothesis never reaches end-of-text: it stopped at the cap, and its lost words
    # count as deletions. Before, nothing in the record or on screen said so.
    dataset = _dataset(tmp_path, processor, [None, None, None])
    model = ScriptedWhisper(processor.tokenizer, multilingual=False, cut={1})
    loaded = LoadedModel(model=model, processor=processor, source="s")
    with caplog.at_level("WARNING", logger="asrtune"):
        evaluation = evaluate_dataset(loaded, dataset, max_new_tokens=6, progress=False, desc="decode test")
    assert [r.getMessage()[:58] for r in caplog.records] == [
        "decode test: 1 of 3 hypotheses stopped at max_new_tokens=6"]  # one line for the set
    assert evaluation.capped_ids == ["id1"]
    summary = evaluation.summary()
    assert (summary["hit_max_new_tokens"], summary["hit_max_new_tokens_ids"], summary["max_new_tokens"]) == (
        1, ["id1"], 6)
    assert (summary["decoding"], summary["loops"], summary["bias_fallbacks"]) == ("greedy", 0, 0)
    decoded = decode_dataset(loaded, dataset, max_new_tokens=6, progress=False)
    assert decoded.capped == [False, True, False]


def test_no_warning_when_every_hypothesis_ends(tmp_path, processor, caplog):
    dataset = _dataset(tmp_path, processor, [None, None])
    loaded = LoadedModel(model=ScriptedWhisper(processor.tokenizer, multilingual=False), processor=processor,
                         source="s")
    with caplog.at_level("WARNING", logger="asrtune"):
        assert evaluate_dataset(loaded, dataset, progress=False).capped_ids == []
    assert not caplog.records


def test_safe_max_new_tokens_follows_the_longest_label():
    assert safe_max_new_tokens([10, 30, 20]) == 2 * 30 + 8
    assert safe_max_new_tokens([3, 4]) == 32  # a floor for very short labels
    assert safe_max_new_tokens([300]) == 448 - 4  # never more than the decoder's positions leave
    assert safe_max_new_tokens([]) == 32
    # the default cap (128) cuts a 100-token label's hypothesis; the derived one does not
    assert safe_max_new_tokens([100]) > 100 + 4
