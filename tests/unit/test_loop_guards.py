"""Loop guards in Whisper decoding and biasing that cannot cause a loop (a tiny Whisper whose logits are scripted)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_processor, scripted_whisper, write_tone
from transformers import LogitsProcessorList

from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import Utterance
from asrtune.evaluation.biasing import TermBiasProcessor, TermTrie
from asrtune.evaluation.decode import evaluate_dataset
from asrtune.models.load import LoadedModel
from asrtune.models.whisper import whisper_decode_batch

EOT, NO_TIMESTAMPS = 50256, 50362
ONE, TWO, THREE, FOUR = 530, 734, 1115, 1440  # " one" " two" " three" " four"
# Next-token scores by the last token. Unbiased, " one" is followed by end-of-text (5 against " two"'s 4).
# " two four" then loops by itself (" two" 5 against end-of-text 4 after " four"), so a term starting with " two"
# (" two three") and a start bonus of 2 pull the hypothesis into a loop the model alone never enters.
SCRIPT = {NO_TIMESTAMPS: {ONE: 10.0}, ONE: {EOT: 5.0, TWO: 4.0}, TWO: {FOUR: 10.0}, FOUR: {TWO: 5.0, EOT: 4.0}}
LOOPING = {**SCRIPT, NO_TIMESTAMPS: {TWO: 10.0}}  # rows of kind 1 loop on their own


@pytest.fixture(scope="module")
def processor():
    return make_processor()


def _bias(weight: float = 2.0) -> LogitsProcessorList:
    return LogitsProcessorList([TermBiasProcessor(TermTrie([[TWO, THREE]]), weight, special_ids=[EOT, NO_TIMESTAMPS],
                                                  text_vocab=50257)])


class _Kinds(FeatureDataset):
    """Log-mels filled with each row's script kind (the ``kind`` the id ends with)."""

    def item_features(self, index):
        return torch.full((80, 100), float(self.utterances[index].id.rsplit("-", 1)[1]))


def _dataset(tmp_path, processor, kinds: list[int], text: str = "one") -> FeatureDataset:
    rows = []
    for i, kind in enumerate(kinds):
        write_tone(tmp_path / f"{i}.wav", seconds=0.3, seed=i)
        rows.append(Utterance(id=f"u{i}-{kind}", audio=str(tmp_path / f"{i}.wav"), text=text))
    return _Kinds(rows, processor, multilingual=False, progress=False)


def test_rows_that_do_not_loop_decode_exactly_as_before(processor):
    """The repetition guard ends looping rows only: the other rows of the batch get the very tokens plain
    ``generate`` gives, and a looped row is cut where its tail first repeats 4 times."""
    model = scripted_whisper({0: SCRIPT, 1: LOOPING})
    loaded = LoadedModel(model=model, processor=processor, source="scripted")
    features = torch.zeros(3, 80, 100)
    features[1] = 1.0  # the row that loops
    with torch.no_grad():
        before = model.generate(input_features=features, max_new_tokens=40, do_sample=False).tolist()
    result = whisper_decode_batch(loaded, features, [100] * 3, language=None, task="transcribe", max_new_tokens=40)
    assert result.texts[0] == result.texts[2] == processor.tokenizer.decode(before[0], skip_special_tokens=True).strip()
    assert result.looped == [False, True, False] and result.capped == [False, False, False]
    unguarded = processor.tokenizer.decode(before[1], skip_special_tokens=True).strip()
    assert unguarded.count("two four") > 10  # ran to the cap without the guard
    assert result.texts[1] == "two four two four two four two four"  # stopped at the fourth repeat
    # row by row, unbatched, the same tokens: no score was touched
    for row in (0, 2):
        with torch.no_grad():
            alone = model.generate(input_features=features[row:row + 1], max_new_tokens=40, do_sample=False)
        assert alone[0].tolist() == [t for t in before[row]][:alone.shape[1]]


def test_a_biased_loop_is_decoded_again_without_the_bias(tmp_path, processor, caplog):
    """The start bonus of " two three" pulls " one" into " two four two four ...", which the model alone never
    decodes; the guard stops the loop, the row is decoded again unbiased, and the record counts the fallback."""
    model = scripted_whisper({0: SCRIPT})
    loaded = LoadedModel(model=model, processor=processor, source="scripted")
    features = torch.zeros(1, 80, 100)
    plain = whisper_decode_batch(loaded, features, [100], language=None, task="transcribe", max_new_tokens=40)
    biased = whisper_decode_batch(loaded, features, [100], language=None, task="transcribe", max_new_tokens=40,
                                  logits_processor=_bias())
    assert plain.texts == ["one"] and plain.looped == [False]
    assert biased.texts == ["one two four two four two four two four"] and biased.looped == [True]

    dataset = _dataset(tmp_path, processor, [0, 0])
    with caplog.at_level("WARNING", logger="asrtune"):
        evaluation = evaluate_dataset(loaded, dataset, max_new_tokens=40, progress=False, logits_processor=_bias(),
                                      desc="decode medical")
    assert evaluation.hypotheses == ["one", "one"] and evaluation.scores.wer == 0.0
    summary = evaluation.summary()
    assert (summary["bias_fallbacks"], summary["bias_fallbacks_ids"], summary["loops"]) == (2, ["u0-0", "u1-0"], 0)
    assert summary["hit_max_new_tokens"] == 0  # no biased row reaches the cap
    assert [r.getMessage() for r in caplog.records] == [
        "decode medical: 2 of 2 hypotheses looped or ran on under the term bias and were decoded again without it"]


def test_a_path_left_once_earns_nothing_when_entered_again():
    """Failure arcs with memory: re-entering the prefix of a term that the hypothesis left earns no bonus, so a
    loop through a term's first tokens collects nothing after its first turn (before: the start bonus each turn)."""
    processor = TermBiasProcessor(TermTrie([[TWO, THREE]]), 2.0, special_ids=[EOT])

    def bonus(tokens: list[int]) -> torch.Tensor:
        return processor(torch.tensor([tokens]), torch.zeros(1, 2000))[0]

    assert bonus([ONE])[TWO] == 2.0  # the first entry: the start bonus
    assert bonus([ONE, TWO])[FOUR] == -2.0  # leaving takes it back
    assert bonus([ONE, TWO, FOUR])[TWO] == 0.0  # spent: entering " two" again earns nothing
    looped = [ONE] + [TWO, FOUR] * 5
    assert bonus(looped)[TWO] == 0.0 and bonus(looped + [TWO])[FOUR] == 0.0  # nothing held, nothing taken back
    assert bonus([ONE, TWO, FOUR, TWO])[THREE] == 2.0  # finishing the term still earns its continuation
