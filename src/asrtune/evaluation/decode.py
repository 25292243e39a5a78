"""Batched greedy (or beam-search) decoding through ``generate`` and scoring against a manifest.

A hypothesis that reaches ``max_new_tokens`` without an end-of-text token was cut off: its missing
words count as deletions. Such hypotheses are counted (and their ids kept) in the evaluation
record and a :class:`TruncationWarning` says so; :func:`safe_max_new_tokens` derives a cap from the
label lengths that no reference would reach.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from asrtune.data.features import FeatureDataset
from asrtune.evaluation.metrics import Scores, score
from asrtune.languages import canonical_language
from asrtune.models.guards import duration_token_cap
from asrtune.models.load import LoadedModel
from asrtune.models.whisper import DECODER_POSITIONS

__all__ = ["Evaluation", "Decoded", "TruncationWarning", "decode_dataset", "transcribe_dataset", "transcribe_sharded",
           "evaluate_dataset", "scoring_language", "write_predictions", "safe_max_new_tokens"]


SHOWN_IDS = 20  # ids of cut-off hypotheses kept in the record (the count is always complete)


class TruncationWarning(UserWarning):
    """Hypotheses stopped at ``max_new_tokens`` without end-of-text: WER counts their lost words."""


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """Scores of one decode, with the hypotheses and how many were cut off by ``max_new_tokens``.

    Attributes:
        capped_ids: ids of the utterances whose hypothesis reached ``max_new_tokens`` without end-of-text.
        max_new_tokens: the cap they were decoded with (None: unknown).
    """

    scores: Scores
    hypotheses: list[str]
    references: list[str]
    ids: list[str]
    capped_ids: list[str] = field(default_factory=list)
    max_new_tokens: int | None = None

    def summary(self) -> dict:
        return {
            **self.scores.as_dict(),
            "max_new_tokens": self.max_new_tokens,
            "hit_max_new_tokens": len(self.capped_ids),
            "hit_max_new_tokens_ids": self.capped_ids[:SHOWN_IDS],
        }


@dataclass(frozen=True, kw_only=True)
class Decoded:
    """Transcripts in dataset order, and which of them hit the ``max_new_tokens`` cap."""

    hypotheses: list[str]
    capped: list[bool]


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


def _warn_capped(desc: str, capped: int, total: int, max_new_tokens: int) -> None:
    if capped:
        warnings.warn(f"{desc}: {capped} of {total} hypotheses stopped at max_new_tokens={max_new_tokens} "
                      "without end-of-text, so their lost words count as deletions; raise loop.max_new_tokens "
                      "(asrtune.evaluation.decode.safe_max_new_tokens derives one from the label lengths)",
                      TruncationWarning, stacklevel=4)  # the caller of decode_dataset (under no_grad)


def transcribe_dataset(loaded: LoadedModel, dataset: FeatureDataset, *, language: str | None = None,
                       task: str = "transcribe", batch_size: int = 16, max_new_tokens: int = 128,
                       progress: bool = True, device: torch.device | None = None,
                       desc: str = "decode", short_input: bool = False, logits_processor=None,
                       num_beams: int = 1, ctc: bool = False) -> list[str]:
    """Transcripts of every utterance, in order (see :func:`decode_dataset`)."""
    return decode_dataset(loaded, dataset, language=language, task=task, batch_size=batch_size,
                          max_new_tokens=max_new_tokens, progress=progress, device=device, desc=desc,
                          short_input=short_input, logits_processor=logits_processor,
                          num_beams=num_beams, ctc=ctc).hypotheses


@torch.no_grad()
def decode_dataset(loaded: LoadedModel, dataset: FeatureDataset, *, language: str | None = None,
                   task: str = "transcribe", batch_size: int = 16, max_new_tokens: int = 128,
                   progress: bool = True, device: torch.device | None = None,
                   desc: str = "decode", short_input: bool = False, logits_processor=None,
                   num_beams: int = 1, ctc: bool = False) -> Decoded:
    """Transcripts of every utterance, in order, and which of them hit ``max_new_tokens``.

    Batches group utterances of one language, since ``generate`` takes one language per call.
    ``short_input``: the encoder sees each batch's longest utterance instead of 30 s (see
    :mod:`asrtune.models.short_input`; faster, not what Whisper was trained on). A hypothesis with
    no end-of-text token stopped at the cap; a :class:`TruncationWarning` counts them.
    ``logits_processor``: a transformers ``LogitsProcessorList`` passed to ``generate`` (e.g. term
    biasing, :func:`asrtune.evaluation.biasing.bias_processor`). ``num_beams``: 1 decodes greedily,
    more runs ``generate``'s beam search with that many beams per utterance. ``ctc``: greedy CTC decoding of
    the projected audio, no LLM involved (families with a CTC head, see ``loop.ctc_only``).
    """
    model = loaded.model
    extra = {} if logits_processor is None else {"logits_processor": logits_processor}
    if num_beams != 1:
        extra["num_beams"] = num_beams
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    family = loaded.family

    def language_of(i: int) -> str | None:
        return canonical_language(dataset.utterances[i].language or language)

    order = sorted(range(len(dataset)), key=lambda i: language_of(i) or "")
    hypotheses: dict[int, str] = {}
    capped: dict[int, bool] = {}
    bar = tqdm(total=len(order), desc=desc, disable=not progress, unit="utt", leave=False)
    start = 0
    while start < len(order):
        lang = language_of(order[start])
        batch = [order[start]]
        while (len(batch) < batch_size and start + len(batch) < len(order)
               and language_of(order[start + len(batch)]) == lang):
            batch.append(order[start + len(batch)])
        features = torch.stack([dataset.features[i] for i in batch]).to(device=device, dtype=dtype)
        budget = max_new_tokens
        if family.decode_guards:  # no more new tokens than the batch's longest audio could hold
            budget = min(max_new_tokens, duration_token_cap(max(float(dataset.durations[i]) for i in batch)))
        frames = [dataset.valid_frames[i] for i in batch]
        if ctc:
            texts, cut = family.ctc_decode(loaded, features, frames), [False] * len(batch)
        else:
            texts, cut = family.decode(loaded, features, frames, language=lang, task=task, max_new_tokens=budget,
                                       short_input=short_input, **extra)
        if budget < max_new_tokens:  # stopping at the duration's budget is the guard working, not a cut-off
            cut = [False] * len(cut)
        for index, text, stopped in zip(batch, texts, cut, strict=True):
            hypotheses[index] = text
            capped[index] = stopped
        start += len(batch)
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    flags = [capped[i] for i in range(len(dataset))]
    _warn_capped(desc, sum(flags), len(dataset), max_new_tokens)
    return Decoded(hypotheses=[hypotheses[i] for i in range(len(dataset))], capped=flags)


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
                     task: str = "transcribe", batch_size: int = 16, max_new_tokens: int = 128,
                     progress: bool = True, desc: str = "decode", short_input: bool = False,
                     logits_processor=None, num_beams: int = 1, ctc: bool = False) -> Evaluation:
    """Decode and score; the normaliser follows the utterances' language (English when unset).

    The record counts the hypotheses that hit ``max_new_tokens`` (``summary()["hit_max_new_tokens"]``).
    """
    decoded = decode_dataset(loaded, dataset, language=language, task=task, batch_size=batch_size,
                             max_new_tokens=max_new_tokens, progress=progress, desc=desc,
                             short_input=short_input, logits_processor=logits_processor, num_beams=num_beams,
                             ctc=ctc)
    hypotheses = decoded.hypotheses
    references = [u.text for u in dataset.utterances]
    ids = [u.id for u in dataset.utterances]
    return Evaluation(scores=score(references, hypotheses, scoring_language(dataset, language)), hypotheses=hypotheses,
                      references=references, ids=ids,
                      capped_ids=[i for i, cut in zip(ids, decoded.capped, strict=True) if cut],
                      max_new_tokens=max_new_tokens)


def write_predictions(evaluation: Evaluation, path: str | Path) -> None:
    """Per-utterance hypotheses and references as JSONL."""
    with Path(path).open("w", encoding="utf-8") as handle:
        for utt_id, ref, hyp in zip(evaluation.ids, evaluation.references, evaluation.hypotheses):
            handle.write(json.dumps({"id": utt_id, "reference": ref, "hypothesis": hyp}, ensure_ascii=False) + "\n")
