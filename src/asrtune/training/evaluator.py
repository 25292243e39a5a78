"""A run's evaluation: its sets, the base model's transcripts of them, and scoring the model being trained.

During training each evaluation scores the eval subset and, under a forgetting budget, the general sets'
subsets; at the end the kept checkpoint is scored on every set and compared with the base model's transcripts
(:func:`asrtune.training.evidence.evidence`). Decoding is split across processes and gathered: every process
gets the same result.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import torch

from asrtune.config import RunConfig
from asrtune.data.features import FeatureDataset
from asrtune.errors import AsrtuneError
from asrtune.evaluation.decode import FLAGS, Evaluation, scoring_language, write_predictions
from asrtune.evaluation.forgetting import Transcripts
from asrtune.evaluation.metrics import score
from asrtune.models.load import LoadedModel
from asrtune.runs.layout import RunDir
from asrtune.training.distributed import Processes
from asrtune.training.evidence import (
    GENERAL,
    EvalSet,
    base_transcripts,
    build_eval_sets,
    decode_sets,
    evidence,
    transcripts_of,
    write_set_predictions,
)

__all__ = ["RunEvaluator"]


class RunEvaluator:
    """Scores the model of one run, on every process.

    Args:
        config: the run config.
        run: the run folder (base transcripts, predictions and non-speech clips go there).
        processes: the run's processes.
        score: decodes and scores one process's share of a set (see ``RecipeParts.score``).
        progress: show progress bars (main process only).
        given_transcripts: the base model's transcripts of the run's sets when already known (a sweep's);
            missing sets are decoded.
    """

    def __init__(self, config: RunConfig, run: RunDir, processes: Processes, *,
                 score: Callable[[LoadedModel, FeatureDataset, RunConfig], Evaluation], progress: bool,
                 given_transcripts: dict[str, Transcripts] | None = None) -> None:
        self.config, self.run, self.processes = config, run, processes
        self._score_part, self.progress, self.given_transcripts = score, progress, given_transcripts
        self.eval_sets: dict[str, EvalSet] = {}
        self.general_subsets: dict[str, FeatureDataset] = {}
        self.base_runs: dict[str, Transcripts] | None = None

    def setup(self, loaded: LoadedModel, eval_set: FeatureDataset, *, pristine: LoadedModel | None,
              device: torch.device, final_evaluation: bool) -> None:
        """Evidence sets (eval, test, general, non-speech) and the base model's transcripts of them.

        ``pristine``: a copy of the base model taken before the strategy changed it (None: load it again where
        transcripts are missing). The base is decoded only when the run scores it: at the end, or against a
        forgetting budget during training.
        """
        config, processes = self.config, self.processes
        family = loaded.family
        if config.loop.decoding not in family.decodings:  # before any step trains, not at the first evaluation
            raise AsrtuneError(f"loop.decoding: {family.display_name} models decode {' or '.join(family.decodings)}, "
                               f"not {config.loop.decoding}")
        show = self.progress and processes.is_main

        def build(write_clips: bool) -> None:
            self.eval_sets = build_eval_sets(config, loaded, self.run.nonspeech, eval_set=eval_set,
                                             progress=show, write_clips=write_clips)

        processes.on_main(lambda: build(write_clips=True))
        if not processes.is_main:  # the main process wrote the non-speech clips; the others only name them
            build(write_clips=False)
        limit = config.data.eval_limit
        # During training the general sets serve the forgetting budget only: with none (inf) they are
        # scored before and after, not at every evaluation.
        budgeted = not math.isinf(config.loop.forgetting_budget)
        self.general_subsets = {name: s.dataset.sample(limit, config.seed) if limit else s.dataset
                                for name, s in self.eval_sets.items() if s.role == GENERAL and budgeted}
        if final_evaluation or self.general_subsets:
            self.base_runs = base_transcripts(config, self.eval_sets, self.run.base_transcripts,
                                              given=self.given_transcripts, device=device, progress=show,
                                              base=pristine, processes=processes)

    def step(self, loaded: LoadedModel,
             subset: FeatureDataset) -> tuple[Evaluation, dict[str, Transcripts], dict[str, object]]:
        """One evaluation during training: the eval subset, the general sets a budget watches, and what else
        the metrics record says (with a CTC loss beside the LLM's, the greedy CTC decoding's WER too)."""
        evaluation, general, extra = self.score(loaded, subset), self.general(loaded), {}
        loop = self.config.loop
        if loop.ctc_only:
            extra["eval_decoding"] = "ctc"
        elif loop.ctc_weight:
            by_ctc = dataclasses.replace(self.config, loop=dataclasses.replace(loop, ctc_only=True))
            extra["ctc_wer"] = self.score(loaded, subset, by_ctc).scores.wer
        return evaluation, general, extra

    def score(self, loaded: LoadedModel, dataset: FeatureDataset, config: RunConfig | None = None) -> Evaluation:
        """Decode and score a set, split across processes; every process gets the same result."""
        processes, config = self.processes, config or self.config
        if processes.world == 1:
            return self._score_part(loaded, dataset, config)
        part = self._score_part(loaded, dataset.shard(processes.rank, processes.world), config)
        mine = range(processes.rank, len(dataset), processes.world)
        by_index = dict(processes.gather(list(zip(mine, part.hypotheses, strict=True))))
        hypotheses = [by_index[i] for i in range(len(dataset))]
        references, ids = [u.text for u in dataset.utterances], [u.id for u in dataset.utterances]
        found = set(processes.gather([(kind, i) for kind in FLAGS for i in part.flagged.get(kind, [])]))
        flagged = {kind: [i for i in ids if (kind, i) in found] for kind in FLAGS}  # in dataset order
        return Evaluation(scores=score(references, hypotheses, scoring_language(dataset, self.config.language)),
                          hypotheses=hypotheses, references=references, ids=ids, flagged=flagged,
                          max_new_tokens=part.max_new_tokens, decoding=part.decoding)

    def general(self, loaded: LoadedModel) -> dict[str, Transcripts]:
        """Transcripts of the general sets' subsets (those a forgetting budget watches)."""
        return {name: transcripts_of(self.score(loaded, subset), subset, self.config.language)
                for name, subset in self.general_subsets.items()}

    def final(self, loaded: LoadedModel, eval_set: FeatureDataset,
              device: torch.device) -> tuple[Evaluation, dict[str, Transcripts]]:
        """The kept model on the whole eval set and every evidence set: (eval evaluation, transcripts by set)."""
        final = self.score(loaded, eval_set)
        others = {name: item for name, item in self.eval_sets.items() if name != "eval"}
        tuned = {"eval": transcripts_of(final, eval_set, self.config.language),
                 **decode_sets(loaded, others, self.config, device=device, processes=self.processes)}
        return final, tuned

    def evidence(self, tuned: dict[str, Transcripts]) -> dict:
        """Per-set scores, forgetting and hallucination against the base model (``results.json``'s)."""
        return evidence(self.eval_sets, tuned, self.base_runs)

    def write(self, final: Evaluation, tuned: dict[str, Transcripts], predictions: Path) -> None:
        """``predictions.jsonl`` and ``evaluation/<set>.jsonl`` (base and tuned hypotheses side by side)."""
        write_predictions(final, predictions)
        write_set_predictions(self.run.evaluation, tuned, self.base_runs)
