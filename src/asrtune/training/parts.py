"""The parts a :class:`~asrtune.training.recipe.Recipe` is built from, each replaceable through its constructor.

Every default is the real part; a test (or a caller with its own evaluation, sampler or model loader) passes
``RecipeParts(score=..., batch_sampler=...)`` instead of patching module globals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from asrtune.config import RunConfig
from asrtune.data.augment import augmented_item
from asrtune.data.features import FeatureDataset
from asrtune.data.sampler import RankBatchSampler
from asrtune.evaluation.decode import Evaluation, evaluate_dataset
from asrtune.models.family import CachePlan, family_of
from asrtune.models.load import LoadedModel
from asrtune.runs.load import load_start_model
from asrtune.strategies import apply_strategy
from asrtune.training.step import TrainingForward

__all__ = ["RecipeParts", "run_scores", "encode_prefix"]


def run_scores(loaded: LoadedModel, dataset: FeatureDataset, config: RunConfig) -> Evaluation:
    """Decoding and scores of one set (one process's share of it, with several), as the run config says
    (``loop.decoding``: greedy with the repetition guard, or deploy; ``loop.ctc_only``: greedy CTC decoding)."""
    return evaluate_dataset(loaded, dataset, language=config.language, task=config.task,
                            batch_size=config.loop.eval_batch_size, max_new_tokens=config.loop.max_new_tokens,
                            decoding=config.loop.decoding, progress=False, ctc=config.loop.ctc_only)


def encode_prefix(model: torch.nn.Module, features: torch.Tensor, plan: CachePlan,
                  frames: torch.Tensor) -> torch.Tensor:
    """The frozen prefix's output for a batch, by the model's family (see ``ModelFamily.encode_prefix``)."""
    return family_of(model).encode_prefix(model, features, plan, frames)


@dataclass(frozen=True, kw_only=True)
class RecipeParts:
    """What the recipe calls to load, change, feed, run and score the model.

    Attributes:
        load_start: the model a run starts from (``config.model``, or the run ``init_from`` names).
        apply_strategy: applies the strategy spec to the loaded model.
        forward: builds the training forward that accelerate wraps (model, cache plan, CTC settings) -> module.
        batch_sampler: this process's micro-batches of the global batches (batches, rank) -> sampler.
        augment: one augmented training item (dataset, index, augmenter, draw) -> item.
        encode_prefix: the frozen prefix's output for a batch (model, features, plan, frames).
        score: decodes and scores a set (loaded, dataset, config) -> Evaluation.
    """

    load_start: Callable[[RunConfig], LoadedModel] = load_start_model
    apply_strategy: Callable[[torch.nn.Module, str], torch.nn.Module] = apply_strategy
    forward: Callable[..., torch.nn.Module] = TrainingForward
    batch_sampler: Callable = RankBatchSampler
    augment: Callable = augmented_item
    encode_prefix: Callable = encode_prefix
    score: Callable[[LoadedModel, FeatureDataset, RunConfig], Evaluation] = run_scores
