"""Batched greedy decoding through ``generate`` and scoring against a manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers.modeling_outputs import BaseModelOutput

from asrtune.data.features import FeatureDataset
from asrtune.evaluation.metrics import Scores, score
from asrtune.models.load import LoadedModel
from asrtune.models.short_input import encode_short, short_input_frames

__all__ = ["Evaluation", "transcribe_dataset", "evaluate_dataset", "write_predictions"]


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    scores: Scores
    hypotheses: list[str]
    references: list[str]
    ids: list[str]

    def summary(self) -> dict:
        return {**self.scores.as_dict()}


@torch.no_grad()
def transcribe_dataset(loaded: LoadedModel, dataset: FeatureDataset, *, language: str | None = None,
                       task: str = "transcribe", batch_size: int = 16, max_new_tokens: int = 128,
                       progress: bool = True, device: torch.device | None = None,
                       desc: str = "decode", short_input: bool = False) -> list[str]:
    """Greedy transcripts of every utterance, in order.

    Batches group utterances of one language, since ``generate`` takes one language per call.
    ``short_input``: the encoder sees each batch's longest utterance instead of 30 s (see
    :mod:`asrtune.models.short_input`; faster, not what Whisper was trained on).
    """
    model = loaded.model
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    order = sorted(range(len(dataset)), key=lambda i: (dataset.utterances[i].language or language or ""))
    hypotheses: dict[int, str] = {}
    bar = tqdm(total=len(order), desc=desc, disable=not progress, unit="utt", leave=False)
    start = 0
    while start < len(order):
        lang = dataset.utterances[order[start]].language or language
        batch = [order[start]]
        while (len(batch) < batch_size and start + len(batch) < len(order)
               and (dataset.utterances[order[start + len(batch)]].language or language) == lang):
            batch.append(order[start + len(batch)])
        features = torch.stack([dataset.features[i] for i in batch]).to(device=device, dtype=dtype)
        if short_input:
            frames = short_input_frames([dataset.valid_frames[i] for i in batch], features.shape[-1])
            inputs = {"encoder_outputs": BaseModelOutput(last_hidden_state=encode_short(model, features, frames))}
        else:
            inputs = {"input_features": features}
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                **loaded.language_kwargs(lang, task))
        sequences = output.sequences if hasattr(output, "sequences") else output
        texts = loaded.processor.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        for index, text in zip(batch, texts):
            hypotheses[index] = text.strip()
        start += len(batch)
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    return [hypotheses[i] for i in range(len(dataset))]


def evaluate_dataset(loaded: LoadedModel, dataset: FeatureDataset, *, language: str | None = None,
                     task: str = "transcribe", batch_size: int = 16, max_new_tokens: int = 128,
                     progress: bool = True, desc: str = "decode", short_input: bool = False) -> Evaluation:
    """Decode and score; the normaliser follows the utterances' language (English when unset)."""
    hypotheses = transcribe_dataset(loaded, dataset, language=language, task=task, batch_size=batch_size,
                                    max_new_tokens=max_new_tokens, progress=progress, desc=desc,
                                    short_input=short_input)
    references = [u.text for u in dataset.utterances]
    languages = {u.language or language for u in dataset.utterances}
    scoring_language = languages.pop() if len(languages) == 1 else "multi"
    return Evaluation(scores=score(references, hypotheses, scoring_language), hypotheses=hypotheses,
                      references=references, ids=[u.id for u in dataset.utterances])


def write_predictions(evaluation: Evaluation, path: str | Path) -> None:
    """Per-utterance hypotheses and references as JSONL."""
    with Path(path).open("w", encoding="utf-8") as handle:
        for utt_id, ref, hyp in zip(evaluation.ids, evaluation.references, evaluation.hypotheses):
            handle.write(json.dumps({"id": utt_id, "reference": ref, "hypothesis": hyp}, ensure_ascii=False) + "\n")
