"""What ``results.json`` holds: how the run trained (settings as resolved, counters, the kept checkpoint) and,
after the final evaluation, how good the kept model is and where the numbers came from."""

from __future__ import annotations

from asrtune.config import RunConfig, config_hash, config_to_dict
from asrtune.data.features import FeatureDataset
from asrtune.data.manifest import manifests_digest
from asrtune.evaluation.decode import Evaluation
from asrtune.evaluation.forgetting import within_budget
from asrtune.models.family import CachePlan
from asrtune.provenance import run_provenance
from asrtune.training.selection import Counters, Selection

__all__ = ["training_results", "final_results", "global_batch_size"]


def global_batch_size(config: RunConfig, world: int) -> int | str:
    """Utterances per optimizer step over every process (or seconds of audio, with ``max_batch_seconds``)."""
    loop = config.loop
    if loop.max_batch_seconds is not None:
        return f"{loop.max_batch_seconds * world * loop.grad_accum_steps:g} s of audio"
    return loop.batch_size * world * loop.grad_accum_steps


def training_results(*, run_root: str, config: RunConfig, learning_rate: float, param_groups: list[dict],
                     selection: Selection, plan: CachePlan | None, cache_stats: dict | None, precision: str,
                     world: int, num_workers: int, counters: Counters, nonfinite_skipped: int,
                     stopped_early: bool, eval_set: FeatureDataset, eval_subset: FeatureDataset,
                     first_step_seconds: float | None) -> dict:
    """How the run trained: what an lr-search trial reports, and the first half of ``results.json``."""
    selector = selection.selector
    optim = config.optim
    return {
        "model": run_root,
        "base_model": config.model,
        "strategy": config.strategy,
        "learning_rate": learning_rate,
        "encoder_learning_rate": optim.encoder_learning_rate or learning_rate,
        "learning_rate_groups": {group["name"]: group["initial_lr"] for group in param_groups},
        "learning_rate_source": optim.learning_rate_source
        or ("config" if optim.learning_rate else "strategy default"),
        "lr_changes": selection.plateau.changes,
        "encoder_cache": {"layers": plan.layers, "whole": plan.whole, **cache_stats} if cache_stats else None,
        "mixed_precision": precision,
        "world_size": world,
        "global_batch_size": global_batch_size(config, world),
        "num_workers": num_workers,
        "warnings": counters.warnings,
        "steps": counters.step,
        "nonfinite_steps_skipped": nonfinite_skipped,
        "best_step": selector.best_step,
        "best_interpolation": selector.best_interpolation,
        "stopped_early": stopped_early,
        "eval_subset": {"size": len(eval_subset), "of": len(eval_set), "seed": config.seed,
                        "ids": [u.id for u in eval_subset.utterances]}
        if config.data.eval_limit else None,
        "baseline_subset": counters.baseline,
        "best_subset_wer": selector.best_wer,
        "train_samples_per_second": round(counters.samples / counters.train_seconds, 3)
        if counters.train_seconds else None,
        "first_step_seconds": round(first_step_seconds, 2) if first_step_seconds else None,
    }


def final_results(training: dict, *, config: RunConfig, final: Evaluation, trainable: int, total: int,
                  evidence: dict, selection: Selection, train_seconds: float, init_from: dict | None) -> dict:
    """``results.json``: ``training`` (see :func:`training_results`), the kept model's scores and evidence, and
    provenance (git sha, config hash, data digest, the resolved config)."""
    provenance = {**run_provenance(config.model), "init_from": init_from}
    selector = selection.selector
    general = bool(config.data.general)
    return {
        **training,
        "final": final.summary(),
        "final_wer": final.scores.wer,
        "final_raw_wer": final.scores.raw_wer,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100.0 * trainable / total,
        "evaluation": evidence,
        "forgetting_budget": config.loop.forgetting_budget if general else None,
        "forgetting_measure": config.loop.forgetting_measure if general else None,
        "best_general_wer_rise": selector.best_forgetting,
        "best_within_budget": within_budget(selector.best_forgetting, config.loop.forgetting_budget),
        "train_seconds": round(train_seconds, 2),
        "git_sha": provenance["asrtune"]["git_sha"],
        "provenance": provenance,
        "config_hash": config_hash(config),
        "data_digest": manifests_digest(config.data.manifests()),  # a sweep re-runs a cell whose data changed
        "config": config_to_dict(config),
    }
