"""Batched decoding through a model family's ``decode`` (greedy, beams, or as deployment does) and scoring.

Every row's decode is flagged for what went wrong or differently, and the evaluation record counts each kind
(with the first ids) and warns once per set (:func:`asrtune.messages.warn`, one line each):

* ``hit_max_new_tokens``: the hypothesis reached ``max_new_tokens`` without an end token; its missing words
  count as deletions (:func:`safe_max_new_tokens` derives a cap from the label lengths no reference reaches).
* ``loops``: the hypothesis ended in a loop. Greedy decoding (and beams) stops such a row with the repetition
  guard (:class:`asrtune.models.guards.RepetitionStop`): the repeats stay in the text, so the hallucination
  metrics count the loop, and the run-on after it costs no more insertions. A row that never loops decodes
  exactly as without the guard.
* ``bias_fallbacks``: decoding biased to a term list looped, ran to the cap or came out too repetitive
  (compression ratio above 2.4), so that row was decoded again without the bias: biasing cannot cause a loop.
* ``temperature_fallbacks`` and ``no_speech`` (``decoding="deploy"``): rows faster-whisper's fallback decoded
  again by sampling, and rows it would drop as silence (:mod:`asrtune.models.whisper_deploy`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from asrtune.data.features import FeatureDataset
from asrtune.decodings import DECODINGS
from asrtune.errors import AsrtuneError
from asrtune.evaluation.metrics import Scores, score
from asrtune.languages import canonical_language
from asrtune.messages import warn
from asrtune.models.family import BatchDecode
from asrtune.models.guards import duration_token_cap, too_repetitive
from asrtune.models.load import LoadedModel
from asrtune.models.whisper import DECODER_POSITIONS

__all__ = ["Evaluation", "Decoded", "FLAGS", "decode_dataset", "transcribe_dataset",
           "transcribe_sharded", "evaluate_dataset", "scoring_language", "write_predictions", "safe_max_new_tokens"]


SHOWN_IDS = 20  # ids of flagged hypotheses kept in the record (the counts are always complete)
FLAGS = ("hit_max_new_tokens", "loops", "bias_fallbacks", "temperature_fallbacks", "no_speech")


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """Scores of one decode, with the hypotheses and the ids of the rows flagged (see the module doc).

    Attributes:
        flagged: for each kind of :data:`FLAGS`, the ids of the utterances it applies to.
        max_new_tokens: the cap they were decoded with (None: unknown).
        decoding: how they were decoded (``greedy`` or ``deploy``).
    """

    scores: Scores
    hypotheses: list[str]
    references: list[str]
    ids: list[str]
    flagged: dict[str, list[str]] = field(default_factory=dict)
    max_new_tokens: int | None = None
    decoding: str = "greedy"

    @property
    def capped_ids(self) -> list[str]:
        """Ids of the utterances whose hypothesis reached ``max_new_tokens`` without end-of-text."""
        return self.flagged.get("hit_max_new_tokens", [])

    def summary(self) -> dict:
        counts = {}
        for kind in FLAGS:
            ids = self.flagged.get(kind, [])
            counts.update({kind: len(ids), f"{kind}_ids": ids[:SHOWN_IDS]})
        return {**self.scores.as_dict(), "decoding": self.decoding, "max_new_tokens": self.max_new_tokens, **counts}


@dataclass(frozen=True, kw_only=True)
class Decoded:
    """Transcripts in dataset order, and for each kind of :data:`FLAGS` which rows it applies to."""

    hypotheses: list[str]
    flags: dict[str, list[bool]]

    @property
    def capped(self) -> list[bool]:
        return self.flags["hit_max_new_tokens"]


def safe_max_new_tokens(label_lengths: Iterable[int], *, floor: int = 32,
                        positions: int = DECODER_POSITIONS, prompt: int = 4) -> int:
    """A ``max_new_tokens`` no reference of the data would reach.

    Twice the longest label (in tokens: a hypothesis may legitimately run longer than its
    reference, and a cut one loses words as deletions), at least ``floor``, at most what the
    decoder's positions leave after the prompt (``<|startoftranscript|>``, language, task,
    ``<|notimestamps|>``).

    Args:
        label_lengths: token count of each label (training targets; prompt and end-of-text may be
            included: they only make the cap safer).
    """
    longest = max(label_lengths, default=0)
    return int(min(positions - prompt, max(floor, 2 * longest + 8)))


def _warn_flagged(desc: str, flags: dict[str, list[bool]], max_new_tokens: int, decoding: str) -> None:
    """One warning line per kind of flag that applies to some row of a set."""
    total = len(flags["hit_max_new_tokens"])
    messages = {
        "hit_max_new_tokens": f"stopped at max_new_tokens={max_new_tokens} without end-of-text, so their lost words "
                              "count as deletions; raise loop.max_new_tokens (or evaluate --max-new-tokens)",
        "loops": ("ended in a loop; the repetition guard stopped them" if decoding == "greedy" else
                  "still end in a loop after the temperature fallback") + " (the hallucination metrics count them)",
        "bias_fallbacks": "looped or ran on under the term bias and were decoded again without it",
        "temperature_fallbacks": "were repetitive or unlikely at temperature 0 and decoded again by sampling, "
                                 "as faster-whisper does",
        "no_speech": "were taken for silence (no-speech probability above 0.6), as faster-whisper does",
    }
    for kind in FLAGS:
        count = sum(flags[kind])
        if count:
            warn(f"{desc}: {count} of {total} hypotheses {messages[kind]}")


def transcribe_dataset(loaded: LoadedModel, dataset: FeatureDataset, **options) -> list[str]:
    """Transcripts of every utterance, in order (see :func:`decode_dataset` for the options)."""
    return decode_dataset(loaded, dataset, **options).hypotheses


def _batches(dataset: FeatureDataset, language: str | None, batch_size: int) -> list[tuple[str | None, list[int]]]:
    """(language, row indices) batches; each holds rows of one language, since ``generate`` takes one per call."""

    def language_of(i: int) -> str | None:
        return canonical_language(dataset.utterances[i].language or language)

    order = sorted(range(len(dataset)), key=lambda i: language_of(i) or "")
    batches: list[tuple[str | None, list[int]]] = []
    for index in order:
        lang = language_of(index)
        if batches and batches[-1][0] == lang and len(batches[-1][1]) < batch_size:
            batches[-1][1].append(index)
        else:
            batches.append((lang, [index]))
    return batches


def _with_rows(result: BatchDecode, rows: list[int], other: BatchDecode) -> BatchDecode:
    """``result`` with ``rows`` replaced by ``other``'s rows, in order."""
    fields = {name: list(getattr(result, name)) for name in ("texts", "capped", "looped", "temperatures", "no_speech")}
    for position, row in enumerate(rows):
        for name, values in fields.items():
            values[row] = getattr(other, name)[position]
    return BatchDecode(**fields)


def _bias_failures(result: BatchDecode) -> list[int]:
    """Rows whose biased hypothesis looped, ran to the cap or is too repetitive (compression ratio above 2.4)."""
    return [row for row, text in enumerate(result.texts)
            if result.looped[row] or result.capped[row] or too_repetitive(text)]


@torch.no_grad()
def decode_dataset(loaded: LoadedModel, dataset: FeatureDataset, *, language: str | None = None,
                   task: str = "transcribe", batch_size: int = 16, max_new_tokens: int = 128,
                   progress: bool = True, device: torch.device | None = None,
                   desc: str = "decode", short_input: bool = False, logits_processor=None,
                   num_beams: int = 1, decoding: str = "greedy", ctc: bool = False) -> Decoded:
    """Transcripts of every utterance, in order, and the flags of each row (see the module doc).

    ``short_input``: the encoder sees each batch's longest utterance instead of 30 s (see
    :mod:`asrtune.models.short_input`; faster, not what Whisper was trained on). ``logits_processor``: a
    transformers ``LogitsProcessorList`` passed to ``generate`` (term biasing,
    :func:`asrtune.evaluation.biasing.bias_processor`); a row it makes loop, run to the cap or come out too
    repetitive is decoded again without it. ``num_beams``: 1 decodes greedily, more runs beam search.
    ``decoding``: ``greedy`` (with ``num_beams``) or ``deploy`` (faster-whisper's defaults; Whisper only).
    ``ctc``: greedy CTC decoding of the projected audio, no LLM involved (families with a CTC head, see
    ``loop.ctc_only``).

    Raises:
        AsrtuneError: a decoding the model's family does not offer.
    """
    model = loaded.model
    family = loaded.family
    if decoding not in DECODINGS:
        raise AsrtuneError(f"decoding must be one of {', '.join(DECODINGS)}, not {decoding!r}")
    if decoding not in family.decodings:
        raise AsrtuneError(f"{family.display_name} models decode {' or '.join(family.decodings)}, not {decoding}")
    options = {"decoding": decoding, "task": task, "short_input": short_input}
    if num_beams != 1:
        options["num_beams"] = num_beams
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    rows: dict[int, tuple[str, dict[str, bool]]] = {}
    bar = tqdm(total=len(dataset), desc=desc, disable=not progress, unit="utt", leave=False)
    for lang, batch in _batches(dataset, language, batch_size):
        features = torch.stack([dataset.features[i] for i in batch]).to(device=device, dtype=dtype)
        frames = [dataset.valid_frames[i] for i in batch]
        budget = max_new_tokens
        if family.decode_guards:  # no more new tokens than the batch's longest audio could hold
            budget = min(max_new_tokens, duration_token_cap(max(float(dataset.durations[i]) for i in batch)))
        extra = {} if logits_processor is None else {"logits_processor": logits_processor}
        if ctc:
            result = BatchDecode.of(family.ctc_decode(loaded, features, frames), [False] * len(batch))
        else:
            result = family.decode(loaded, features, frames, language=lang, max_new_tokens=budget, **options,
                                   **extra)
        fallback = _bias_failures(result) if logits_processor is not None and not ctc else []
        if fallback:  # biasing must not cause a loop: those rows again, unbiased
            plain = family.decode(loaded, features[fallback], [frames[k] for k in fallback], language=lang,
                                  max_new_tokens=budget, **options)
            result = _with_rows(result, fallback, plain)
        for position, index in enumerate(batch):
            rows[index] = (result.texts[position], {
                # stopping at the duration's budget is the guard working, not a cut-off
                "hit_max_new_tokens": result.capped[position] and budget == max_new_tokens,
                "loops": result.looped[position],
                "bias_fallbacks": position in fallback,
                "temperature_fallbacks": result.temperatures[position] > 0,
                "no_speech": result.no_speech[position],
            })
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    flags = {kind: [rows[i][1][kind] for i in range(len(dataset))] for kind in FLAGS}
    _warn_flagged(desc, flags, max_new_tokens, decoding)
    return Decoded(hypotheses=[rows[i][0] for i in range(len(dataset))], flags=flags)


def transcribe_sharded(loaded: LoadedModel, dataset: FeatureDataset, processes=None, **options) -> list[str]:
    """:func:`transcribe_dataset` split across processes: each decodes every ``world``-th utterance and
    every process gets all transcripts, in order. ``processes`` None (or one process): one decodes all."""
    if processes is None or processes.world == 1:
        return transcribe_dataset(loaded, dataset, **options)
    mine = range(processes.rank, len(dataset), processes.world)
    texts = transcribe_dataset(loaded, dataset.shard(processes.rank, processes.world), **options)
    gathered = dict(processes.gather(list(zip(mine, texts, strict=True))))
    return [gathered[i] for i in range(len(dataset))]


def scoring_language(dataset: FeatureDataset, language: str | None) -> str | None:
    """The language a set is scored in: its utterances' (``language`` for rows without one), or ``multi``."""
    languages = {canonical_language(u.language or language) for u in dataset.utterances}
    return languages.pop() if len(languages) == 1 else "multi"


def evaluate_dataset(loaded: LoadedModel, dataset: FeatureDataset, *, language: str | None = None,
                     max_new_tokens: int = 128, decoding: str = "greedy", **options) -> Evaluation:
    """Decode (see :func:`decode_dataset` for the options) and score; the normaliser follows the utterances'
    language (English when unset). The record counts each kind of flagged row (``summary()``)."""
    decoded = decode_dataset(loaded, dataset, language=language, max_new_tokens=max_new_tokens, decoding=decoding,
                             **options)
    hypotheses = decoded.hypotheses
    references = [u.text for u in dataset.utterances]
    ids = [u.id for u in dataset.utterances]
    flagged = {kind: [i for i, on in zip(ids, decoded.flags[kind], strict=True) if on] for kind in FLAGS}
    return Evaluation(scores=score(references, hypotheses, scoring_language(dataset, language)), hypotheses=hypotheses,
                      references=references, ids=ids, flagged=flagged, max_new_tokens=max_new_tokens,
                      decoding=decoding)


def write_predictions(evaluation: Evaluation, path: str | Path) -> None:
    """Per-utterance hypotheses and references as JSONL."""
    with Path(path).open("w", encoding="utf-8") as handle:
        for utt_id, ref, hyp in zip(evaluation.ids, evaluation.references, evaluation.hypotheses):
            handle.write(json.dumps({"id": utt_id, "reference": ref, "hypothesis": hyp}, ensure_ascii=False) + "\n")
