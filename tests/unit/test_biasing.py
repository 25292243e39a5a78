"""Decoding-time term biasing (asrtune.evaluation.biasing) on Whisper's tokenizer and a tiny random Whisper."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from conftest import make_tokenizer, tiny_whisper

from asrtune.errors import AsrtuneError
from asrtune.evaluation.biasing import TermBiasProcessor, TermTrie, bias_processor, build_trie, term_variants
from asrtune.evaluation.terms import parse_terms

VOCAB = 51864


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _changed(before: torch.Tensor, after: torch.Tensor) -> dict[int, set[int]]:
    """Row -> the token ids whose score changed."""
    rows, tokens = torch.nonzero(after != before, as_tuple=True)
    out: dict[int, set[int]] = {}
    for row, token in zip(rows.tolist(), tokens.tolist()):
        out.setdefault(row, set()).add(token)
    return out


def _boosted(delta: torch.Tensor) -> set[int]:
    """The tokens of a one-row change (1, V) above the row's least change (what every other token gets)."""
    return set(torch.nonzero(delta[0] > delta[0].min()).flatten().tolist())


def test_trie_continuations_of_partial_matches():
    trie = TermTrie([[1, 2, 3], [1, 4], [5, 2, 6]])
    assert trie.depth == 3 and sorted(trie.root) == [1, 5]
    assert trie.continuations([9, 1]) == {2, 4}
    assert trie.continuations([1, 2]) == {3}
    assert trie.continuations([5, 2]) == {6}
    assert trie.continuations([7, 2]) == set()  # 2 alone starts nothing
    assert trie.continuations([1, 2, 3]) == set()  # a finished term continues nowhere


def test_trie_pending_is_the_longest_unfinished_match():
    trie = TermTrie([[1, 2, 3], [2, 3, 4], [5], [5, 6, 7]])
    assert trie.ends == {(1, 2, 3), (2, 3, 4), (5,), (5, 6, 7)}
    assert trie.pending([9, 1, 2]) == 1
    assert trie.pending([1, 2, 3]) == 1  # " 2 3" goes on to 4 (" 1 2 3" itself is finished)
    assert trie.pending([9, 5]) is None  # a whole term, even one that prefixes a longer one
    assert trie.pending([5, 6]) == 0
    assert trie.pending([9, 8]) is None


def test_terms_are_tokenised_mid_sentence_with_capitalised_variants(tokenizer):
    assert term_variants("amoxicillin") == ["amoxicillin", "Amoxicillin"]
    trie = build_trie(tokenizer, parse_terms(["amoxicillin"]))
    lower, upper = _ids(tokenizer, " amoxicillin"), _ids(tokenizer, " Amoxicillin")
    assert lower != upper and trie.sequences == 2
    assert set(trie.root) == {lower[0], upper[0]}
    assert trie.node(lower) == {} and trie.node(upper) == {}


def test_processor_changes_exactly_the_intended_logits(tokenizer):
    terms = parse_terms(["amoxicillin", "atrial fibrillation"])
    processor = bias_processor(tokenizer, terms, 1.5, start_weight=0.5)[0]
    amox = _ids(tokenizer, " amoxicillin")
    atrial = _ids(tokenizer, " atrial fibrillation")
    sot, eot = tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|endoftext|>"])
    plain = _ids(tokenizer, " the patient")
    rows = torch.tensor([
        [sot, sot] + plain + amox[:1],  # mid-way into amoxicillin: its start bonus is held
        [sot] + plain + atrial[:2],  # two tokens into atrial fibrillation: start + continuation held
        [sot] + [eot] * (len(plain) + 2),  # nothing generated yet: a sentence starts
    ])
    scores = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(0)).round()  # exact sums
    delta = processor(rows, scores.clone()) - scores
    mid = {amox[0], atrial[0]}  # lower-case first tokens; " Am", " At" start sentences only
    capitalised = {_ids(tokenizer, " Amoxicillin")[0], _ids(tokenizer, " Atrial fibrillation")[0]}
    assert set(processor.mid_starts) == mid and set(processor.starts) == mid | capitalised
    # row 0: going on earns the weight; anything else gives back the held 0.5, a new start earns its own
    assert delta[0, amox[1]] == 1.5 and delta[0, atrial[0]] == 0.5 - 0.5
    assert delta[0, amox[0]] == -0.5  # " am" again would repeat the last token: no start bonus
    assert set(delta[0].tolist()) == {1.5, 0.0, -0.5}
    assert delta[1, atrial[2]] == 1.5 and delta[1, atrial[0]] == 0.5 - 2.0 and delta[1, eot] == -2.0
    assert set(delta[1].tolist()) == {1.5, -1.5, -2.0}
    assert _changed(scores, scores + delta[2])[0] == mid | capitalised  # nothing held: starts only
    assert set(delta[2][delta[2] != 0].tolist()) == {0.5}


def test_after_a_full_stop_capitalised_terms_may_start(tokenizer):
    processor = bias_processor(tokenizer, parse_terms(["metformin"]), 1.0)[0]
    upper = _ids(tokenizer, " Metformin")[0]
    scores = torch.zeros(2, VOCAB)
    rows = torch.tensor([_ids(tokenizer, " Take it."), _ids(tokenizer, " Take it,")])
    changed = _changed(scores, processor(rows, scores.clone()))
    assert upper in changed[0] and upper not in changed[1]


def test_the_bonus_never_helps_a_loop_along(tokenizer):
    """A token that would repeat the last n tokens back to back (n <= 4) gets no bonus."""
    trie = TermTrie([[10, 11], [12], [13]])
    processor = TermBiasProcessor(trie, 1.0)
    scores = torch.zeros(4, 100)
    rows = torch.tensor([
        [5, 6, 7, 8, 9, 10],  # 11 continues the term; 10 again would repeat the last token
        [5, 6, 7, 8, 9, 12],  # 12 finished a term; 12 again is blocked
        [5, 6, 12, 13, 7, 12],  # 12 repeats itself: blocked; 13 would not repeat anything yet
        [12, 13, 6, 12, 13, 6],  # 12 would make "13 6 12" twice in a row: blocked
    ])
    changed = _changed(scores, processor(rows, scores.clone()))
    assert _boosted(processor(rows[:1], scores[:1].clone()) - scores[:1]) == {11, 12, 13}
    assert changed[1] == {10, 13}
    assert changed[2] == {10, 13}
    assert changed[3] == {10, 13}
    blocked = processor(torch.tensor([[12, 13, 12]]), torch.zeros(1, 100))
    assert blocked[0, 13] == 0 and blocked[0, 10] == 1.0  # "12 13 12" + 13 repeats the bigram


def _earned(processor: TermBiasProcessor, tokens: list[int], vocab: int = 100) -> float:
    """The bonus a hypothesis collects token by token: the sum of each step's change to its next token."""
    total = 0.0
    for step in range(len(tokens)):
        delta = processor(torch.tensor([tokens[:step] or [0]]), torch.zeros(1, vocab))
        total += float(delta[0, tokens[step]])
    return total


def test_a_hypothesis_keeps_the_bonus_of_finished_terms_only():
    """Failure arcs: leaving an unfinished term takes back what it earned, so beams that started a term and
    left it are not ahead of beams that never started it."""
    processor = TermBiasProcessor(TermTrie([[10, 11, 12]]), 2.0, start_weight=1.0, special_ids=[0])
    assert _earned(processor, [5, 10, 11, 12, 6]) == 1.0 + 2.0 + 2.0  # a whole term keeps start + continuations
    assert _earned(processor, [5, 10, 11, 6, 7]) == 0.0  # left after two tokens: all given back
    # a failed start, then the whole term: the path "10 11" was paid for once, only 12 earns again
    assert _earned(processor, [5, 10, 11, 6, 10, 11, 12, 8]) == 2.0
    assert _earned(processor, [5, 10, 11]) == 3.0  # still unfinished at the end: held, not yet given back
    delta = processor(torch.tensor([[5, 10, 11]]), torch.zeros(1, 100))[0]
    assert delta[12] == 2.0 and delta[6] == -3.0 and delta[10] == 1.0 - 3.0  # leaving costs what is held


def test_a_term_inside_a_longer_one_keeps_its_own_bonus():
    processor = TermBiasProcessor(TermTrie([[10], [10, 11, 12]]), 2.0, start_weight=1.0, special_ids=[0])
    assert _earned(processor, [5, 10, 6]) == 1.0  # " 10" is a term by itself
    assert _earned(processor, [5, 10, 11, 6]) == 1.0  # the longer term's continuation is given back, not its start
    assert _earned(processor, [5, 10, 11, 12]) == 5.0


def test_only_generated_tokens_are_matched(tokenizer):
    """A prompt ending mid-term (before the begin index, or before a special token) continues nothing."""
    amox = _ids(tokenizer, " amoxicillin")
    processor = bias_processor(tokenizer, parse_terms(["amoxicillin"]), 2.0)[0]
    sot = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    scores = torch.zeros(1, VOCAB)
    ends_mid_term = torch.tensor([[amox[0], amox[1]]])
    processor.set_begin_index(2)  # both tokens are prompt
    assert _changed(scores, processor(ends_mid_term, scores.clone()))[0] == set(processor.starts)
    processor.set_begin_index(0)
    assert amox[2] in _changed(scores, processor(ends_mid_term, scores.clone()))[0]
    after_special = torch.tensor([[amox[0], amox[1], sot]])
    assert _changed(scores, processor(after_special, scores.clone()))[0] == set(processor.starts)


def test_bad_weights_are_errors(tokenizer):
    with pytest.raises(AsrtuneError, match="bias-weight"):
        bias_processor(tokenizer, parse_terms(["amoxicillin"]), -1.0)
    with pytest.raises(AsrtuneError, match="bias-weight"):
        bias_processor(tokenizer, parse_terms(["amoxicillin"]), float("nan"))
    with pytest.raises(AsrtuneError, match="at least one term"):
        TermBiasProcessor(TermTrie(), 1.0)


def _generate(model, features, **kwargs):
    with torch.no_grad():
        return model.generate(input_features=features, do_sample=False, num_beams=1, max_new_tokens=12, **kwargs)


@pytest.fixture(scope="module")
def model_and_features():
    model = tiny_whisper(seed=0, perturb=0.02)
    features = torch.randn(3, 80, 100, generator=torch.Generator().manual_seed(0))
    return model, features


def test_weight_zero_changes_nothing_in_generate(tokenizer, model_and_features):
    model, features = model_and_features
    plain = _generate(model, features)
    biased = _generate(model, features, logits_processor=bias_processor(tokenizer, parse_terms(["amoxicillin"]), 0.0))
    assert torch.equal(plain, biased)


class _StartsOnceOnly(LogitsProcessor):
    """The bias with start tokens at the first step only, so a row's path through the trie is known."""

    def __init__(self, bias: TermBiasProcessor, start: int) -> None:
        self.bias, self.start, self.rows = bias, start, []

    def __call__(self, input_ids, scores):
        self.bias.starts = [self.start] if not self.rows else []
        self.rows.append(input_ids.shape[0])
        return self.bias(input_ids, scores)


def test_a_large_weight_spells_the_term_in_every_row_of_a_batch(tokenizer, model_and_features):
    """Greedy and batched: a row that starts a term is led through its continuations to the end."""
    model, features = model_and_features
    amox = _ids(tokenizer, " amoxicillin")
    wrapped = _StartsOnceOnly(bias_processor(tokenizer, parse_terms(["amoxicillin"]), 1e4)[0], amox[0])
    out = _generate(model, features, logits_processor=LogitsProcessorList([wrapped]))
    assert [row[:len(amox)] for row in out.tolist()] == [amox] * 3  # start token, then each continuation
    assert out.tolist() != _generate(model, features).tolist()
    assert set(wrapped.rows) == {3}  # one row per utterance, every step


def test_generate_sets_the_begin_index_after_a_prompt(tokenizer, model_and_features):
    model, features = model_and_features
    processors = bias_processor(tokenizer, parse_terms(["amoxicillin"]), 1.0)
    prompt = torch.tensor(tokenizer.convert_tokens_to_ids(["<|startofprev|>"]) + _ids(tokenizer, " amox"))
    out = _generate(model, features[:1], logits_processor=processors, prompt_ids=prompt)
    assert processors[0].begin_index >= len(prompt) + 1  # the prompt and <|startoftranscript|> are not generated
    assert out.shape[0] == 1


def test_evaluate_cli_with_bias_and_terms(tiny_model_dir, tiny_data, capsys):
    from asrtune.cli import main

    code = main(["evaluate", str(tiny_model_dir), "--data", str(tiny_data[1]), "--json", "--batch-size", "2",
                 "--terms", "packaged:medical_terms_en", "--bias", "packaged:medical_terms_en",
                 "--bias-weight", "3", "--num-beams", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["num_beams"] == 2
    assert result["bias"] == {"terms": "packaged:medical_terms_en", "weight": 3.0, "start_weight": 3.0}
    assert result["term_recall"] is None and isinstance(result["term_insertions"], int)  # no term in the refs
    assert "| biasing" in captured.err and "| term recall" in captured.err


def test_bias_weight_without_bias_is_an_error(tiny_model_dir, tiny_data, capsys):
    from asrtune.cli import main

    with pytest.raises(SystemExit):
        main(["evaluate", str(tiny_model_dir), "--data", str(tiny_data[1]), "--num-beams", "0"])
    assert "must be at least 1" in capsys.readouterr().err

    assert main(["evaluate", str(tiny_model_dir), "--data", str(tiny_data[1]), "--bias-weight", "2"]) == 2
    assert "--bias-weight and --bias-start-weight need --bias" in capsys.readouterr().err


def test_cli_default_weight_is_the_library_default():
    from asrtune.commands.evaluate import BIAS_WEIGHT
    from asrtune.evaluation.biasing import DEFAULT_BIAS_WEIGHT

    assert BIAS_WEIGHT == DEFAULT_BIAS_WEIGHT


def test_transcribe_passes_the_bias_to_every_window(tiny_model_dir, tmp_path):
    from conftest import write_tone

    from asrtune.inference.longform import TranscribeOptions, transcribe_files
    from asrtune.runs.load import load_model

    loaded = load_model(str(tiny_model_dir))
    audio = tmp_path / "tone.wav"
    write_tone(audio, seconds=2.5)  # 1 s windows: several windows, each with the previous text forced
    options = TranscribeOptions(temperatures=(0.0,), compression_ratio_threshold=None, logprob_threshold=None,
                                no_speech_threshold=None, max_new_tokens=4, prompt="amoxicillin")
    tokenizer = loaded.processor.tokenizer
    plain, _ = transcribe_files(loaded, [audio], options, progress=False)
    zero, _ = transcribe_files(loaded, [audio], options, progress=False,
                               logits_processor=bias_processor(tokenizer, parse_terms(["amoxicillin"]), 0.0))
    assert zero[0].text == plain[0].text
    strong = bias_processor(tokenizer, parse_terms(["amoxicillin"]), 1e4)
    biased, _ = transcribe_files(loaded, [audio], options, progress=False, logits_processor=strong)
    assert biased[0].text != plain[0].text and "am" in biased[0].text.lower()
    prompt_length = len(tokenizer.encode(" amoxicillin", add_special_tokens=False)) + 1  # + <|startofprev|>
    assert strong[0].begin_index > prompt_length  # the prompt is forced, not generated


def test_transcribe_cli_reports_the_bias(tiny_model_dir, tmp_path, capsys):
    from conftest import write_tone

    from asrtune.cli import main

    write_tone(tmp_path / "tone.wav", seconds=0.8)
    code = main(["transcribe", str(tiny_model_dir), str(tmp_path / "tone.wav"), "--no-fallback",
                 "--max-new-tokens", "4", "--bias", "packaged:medical_terms_en", "--bias-weight", "1.5"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "packaged:medical_terms_en, weight 1.5 (start 1.5)" in captured.err
    assert main(["transcribe", str(tiny_model_dir), str(tmp_path / "tone.wav"), "--bias", "missing.txt"]) == 2
    assert "term list not found" in capsys.readouterr().err


def test_a_one_letter_first_token_gets_no_start_bonus_but_the_term_continues(tokenizer):
    tachy = _ids(tokenizer, " tachycardia")
    assert tokenizer.decode(tachy[:1]).strip() == "t"
    processor = bias_processor(tokenizer, parse_terms(["tachycardia", "metformin"]), 1.0)[0]
    assert tachy[0] not in processor.starts and tachy[0] not in processor.mid_starts
    assert _ids(tokenizer, " metformin")[0] in processor.mid_starts
    scores = torch.zeros(1, VOCAB)
    changed = _changed(scores, processor(torch.tensor([_ids(tokenizer, " fast") + tachy[:1]]), scores.clone()))
    assert tachy[1] in changed[0]


def test_transcribe_cli_decodes_with_beams(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from conftest import write_tone
    from transformers import WhisperForConditionalGeneration

    from asrtune.cli import main

    seen = []
    generate = WhisperForConditionalGeneration.generate

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("num_beams", 1))
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(WhisperForConditionalGeneration, "generate", spy)
    write_tone(tmp_path / "tone.wav", seconds=0.8)
    code = main(["transcribe", str(tiny_model_dir), str(tmp_path / "tone.wav"), "--no-fallback",
                 "--max-new-tokens", "4", "--bias", "packaged:medical_terms_en", "--num-beams", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert seen == [2] and "2 beams" in captured.err
    with pytest.raises(SystemExit):
        main(["transcribe", str(tiny_model_dir), str(tmp_path / "tone.wav"), "--num-beams", "0"])
    assert "must be at least 1, not 0" in capsys.readouterr().err
