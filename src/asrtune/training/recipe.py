"""The training recipe: one explicit loop on accelerate, read top to bottom.

AdamW, linear warm-up then linear decay, gradient accumulation and clipping. Every
``loop.eval_every`` steps the eval set is decoded and scored; the checkpoint is kept only when its
WER beats the best so far (the paper's lowest-WER checkpoint), and ``loop.patience`` evaluations
without improvement stop the run. Step 0 is evaluated too, so the best checkpoint is never worse
than the model we started from.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from asrtune.config import RunConfig, absolute_model, config_from_dict, config_hash, config_to_dict, parse_yaml, save_config
from asrtune.data.augment import Augmenter, augmented_item
from asrtune.data.feature_cache import FeatureCache
from asrtune.data.features import FeatureDataset, collate
from asrtune.data.manifest import read_manifest
from asrtune.data.sampler import batch_indices, bucketed_batch_indices
from asrtune.errors import AsrtuneError
from asrtune.evaluation.decode import Evaluation, evaluate_dataset, write_predictions
from asrtune.evaluation.forgetting import (Transcripts, checkpoint_rank, forgetting_of, is_better,
                                           within_budget)
from asrtune.evaluation.sets import (BASE_TRANSCRIPTS, GENERAL, base_transcripts, build_eval_sets,
                                     decode_sets, evidence, pristine_copy, transcripts_of,
                                     write_set_predictions)
from asrtune.inspection import count_parameters
from asrtune.models.load import LoadedModel, load_model
from asrtune.models.short_input import encode_short, short_input_frames
from asrtune.strategies import apply_strategy, default_learning_rate
from asrtune.training.checkpoint import BEST, LAST, load_trainable, save_trainable, write_dir_atomically
from asrtune.training.encoder_cache import (CPU_CACHE_BATCH, CachePlan, cache_bytes, cache_plan, encode_prefix,
                                            encode_top)
from asrtune.training.lr_control import OverfitWatch, WerPlateau, parameter_groups, warmup_schedule
from asrtune.training.precision import accelerator_mixed_precision, resolve_mixed_precision, step_autocast

__all__ = ["train"]

LABEL_PAD_MULTIPLE = 8  # training batches' label length rounds up to this (see collate)


@dataclass
class _State:
    """What a resumed run needs besides weights and optimizer."""

    step: int = 0
    best_wer: float = float("inf")
    best_step: int = -1
    evals_without_improvement: int = 0
    baseline: dict | None = None
    lr_scale: float = 1.0
    loss_since_eval: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    lr_changes: list[dict] = field(default_factory=list)
    best_forgetting: float | None = None  # the kept checkpoint's largest WER rise on the general sets


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _append_jsonl(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


_FIXED_ON_RESUME = ("model", "strategy", "language", "task", "seed", "data")


def _prepare_run_dir(output_dir: Path, resume: bool, config: RunConfig) -> None:
    last = output_dir / "checkpoints" / LAST
    if resume:
        if not (last / "state.json").is_file():
            raise AsrtuneError(f"--resume: no checkpoint to resume in {output_dir}")
        saved = config_to_dict(config_from_dict(parse_yaml((output_dir / "config.yaml").read_text())))
        wanted = config_to_dict(config)
        changed = [key for key in _FIXED_ON_RESUME if saved[key] != wanted[key]]
        if changed:
            raise AsrtuneError(f"--resume: the run's config.yaml has another {', '.join(changed)}; "
                               "a resumed run may change only optim and loop settings")
        return
    if (output_dir / "checkpoints").exists() or (output_dir / "results.json").exists():
        raise AsrtuneError(f"{output_dir} already holds a run; pass --resume to continue it, "
                           "or choose another --output-dir (asrtune never overwrites a run)")
    output_dir.mkdir(parents=True, exist_ok=True)


def _save_last(folder_root: Path, model, optimizer, scheduler, state: _State) -> None:
    def write(folder: Path) -> None:
        save_trainable(model, folder, {"step": state.step})
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state()}, folder / "optimizer.pt")
        (folder / "state.json").write_text(json.dumps(state.__dict__, indent=2))

    write_dir_atomically(folder_root / LAST, write)


def _load_last(folder: Path, model, optimizer, scheduler) -> _State:
    load_trainable(model, folder)
    saved = torch.load(folder / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    return _State(**json.loads((folder / "state.json").read_text()))


def _evaluate(loaded: LoadedModel, dataset: FeatureDataset, config: RunConfig) -> Evaluation:
    return evaluate_dataset(loaded, dataset, language=config.language, task=config.task,
                            batch_size=config.loop.eval_batch_size, max_new_tokens=config.loop.max_new_tokens,
                            progress=False)


def _datasets(config: RunConfig, loaded: LoadedModel, progress: bool) -> tuple[FeatureDataset, FeatureDataset, FeatureDataset]:
    if not config.data.train or not config.data.eval:
        raise AsrtuneError("data.train and data.eval must name manifests")
    extractor = loaded.processor.feature_extractor
    cache = FeatureCache.for_extractor(extractor) if config.data.feature_cache else None
    common = dict(processor=loaded.processor, multilingual=loaded.multilingual, language=config.language,
                  task=config.task, progress=progress, cache=cache)
    train_rows = read_manifest(config.data.train)
    eval_rows = read_manifest(config.data.eval)
    train_set = FeatureDataset(train_rows, desc="features train", **common)
    eval_set = FeatureDataset(eval_rows, desc="features eval", **common)
    limited = eval_set.head(config.data.eval_limit) if config.data.eval_limit else eval_set
    return train_set, eval_set, limited


# The last frozen prefix encoded, reused by the next run in this process with the same base model,
# prefix and utterances (lr-search trials and their resumed rungs): frozen weights come from the base
# model whatever the run's seed or learning rate, so the outputs are the same. One entry at a time.
_LAST_PREFIX: dict[tuple, list[torch.Tensor]] = {}


def _encoder_cache(config: RunConfig, model: torch.nn.Module, train_set: FeatureDataset,
                   accelerator: Accelerator, precision: str,
                   progress: bool) -> tuple[CachePlan | None, list[torch.Tensor] | None]:
    """The frozen encoder prefix's output for the training set, when there is one and it fits the bound."""
    plan = cache_plan(model)
    if plan is None:
        return None, None
    if not plan.whole and accelerator.num_processes > 1:
        return None, None  # the layers above the prefix must run inside the DDP wrapper's forward
    if not plan.whole and config.loop.short_input and accelerator.num_processes == 1:
        tqdm.write(f"loop.short_input: the encoder runs from its stem on each batch's cut window instead of "
                   f"caching {plan.layers} frozen layer(s) of the 30 s one")
        return None, None
    if config.data.augment:
        tqdm.write(f"encoder prefix frozen, but data.augment={config.data.augment!r} changes its inputs every "
                   "step: encoding every step instead of caching")
        return None, None
    needed = cache_bytes(model, len(train_set)) / 2**20
    if needed > config.loop.encoder_cache_mb:
        tqdm.write(f"encoder prefix frozen, but caching its outputs needs {needed:.0f} MB "
                   f"> loop.encoder_cache_mb={config.loop.encoder_cache_mb}: encoding every step instead")
        return None, None
    dtype = next(model.parameters()).dtype
    key = (config.model, plan, tuple(u.audio for u in train_set.utterances), str(accelerator.device), dtype,
           precision)
    if key not in _LAST_PREFIX:
        _LAST_PREFIX.clear()
        batch_size = CPU_CACHE_BATCH if accelerator.device.type == "cpu" else config.loop.eval_batch_size
        with step_autocast(precision, accelerator):  # the uncached step's arithmetic: its own outputs
            _LAST_PREFIX[key] = encode_prefix(model, train_set, plan, batch_size=batch_size,
                                              device=accelerator.device,
                                              progress=progress and accelerator.is_main_process)
    return plan, _LAST_PREFIX[key]


def _short_input(config: RunConfig, cached: bool, *, world: int) -> bool:
    """Whether training steps cut the encoder input to the batch's longest utterance (loop.short_input)."""
    if not config.loop.short_input:
        return False
    if cached:
        tqdm.write("loop.short_input: the whole encoder is frozen and its outputs cached, which costs less; "
                   "using the cache")
        return False
    if world > 1:
        tqdm.write("loop.short_input: not with several processes (the encoder must run inside the DDP "
                   "wrapper's forward); using the full 30 s input")
        return False
    return True


def _batch(config: RunConfig, train_set: FeatureDataset, batch_size: int, micro_batch: int) -> list[int]:
    """Items of micro-batch ``micro_batch``: a pure function of (seed, micro_batch); resuming needs no state."""
    if config.data.duration_buckets > 1:
        return bucketed_batch_indices(train_set.durations, batch_size, config.seed, micro_batch,
                                      config.data.duration_buckets)
    return batch_indices(len(train_set), batch_size, config.seed, micro_batch)


def train(config: RunConfig, output_dir: str | Path, *, resume: bool = False, progress: bool = True,
          final_evaluation: bool = True, baseline_transcripts: dict[str, Transcripts] | None = None) -> dict:
    """Fine-tune ``config.model`` with ``config.strategy``; returns what ``results.json`` holds.

    Args:
        config: the resolved run config.
        output_dir: the run folder (created; must not already hold a run unless ``resume``).
        resume: continue from ``checkpoints/last``.
        progress: show tqdm bars.
        final_evaluation: score the kept checkpoint on the whole eval set at the end (lr-search
            trials skip it: their score is the last evaluation).
        baseline_transcripts: the base model's transcripts of the run's sets, when already known (a
            sweep decodes them once per dataset); missing sets are decoded here.
    """
    output_dir = Path(output_dir)
    config = dataclasses.replace(config, model=absolute_model(config.model, Path.cwd()))
    _prepare_run_dir(output_dir, resume, config)
    started = time.perf_counter()
    set_seed(config.seed)
    precision = resolve_mixed_precision(config.loop.mixed_precision)
    accelerator = Accelerator(mixed_precision=accelerator_mixed_precision(precision))
    if progress and accelerator.is_main_process and config.loop.mixed_precision == "auto":
        tqdm.write(f"loop.mixed_precision=auto: training in {'bf16 autocast' if precision == 'bf16' else 'fp32'} "
                   f"on {accelerator.device.type} (evaluation decodes in fp32)")

    base = load_model(config.model)
    _, base_total = count_parameters(base.model)
    pristine = pristine_copy(base, output_dir / BASE_TRANSCRIPTS, baseline_transcripts)  # the base, for later
    model = apply_strategy(base.model, config.strategy)
    trainable, _ = count_parameters(model)
    loaded = LoadedModel(model=model, processor=base.processor, source=config.model, strategy=config.strategy)
    train_set, eval_set, eval_subset = _datasets(config, loaded, progress and accelerator.is_main_process)
    # Evidence sets (eval, test, general, non-speech) and the base model's transcripts of them:
    # forgetting and every "change against the base" are measured against these.
    eval_sets = build_eval_sets(config, loaded, output_dir / "nonspeech", eval_set=eval_set,
                                progress=progress and accelerator.is_main_process)
    general_subsets = {name: s.dataset.head(config.data.eval_limit) if config.data.eval_limit else s.dataset
                       for name, s in eval_sets.items() if s.role == GENERAL}
    base_runs = base_transcripts(config, eval_sets, output_dir / BASE_TRANSCRIPTS, given=baseline_transcripts,
                                 device=accelerator.device, progress=progress and accelerator.is_main_process,
                                 base=pristine) if final_evaluation or general_subsets else None
    del pristine

    learning_rate = config.optim.learning_rate or default_learning_rate(config.strategy)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise AsrtuneError(f"strategy {config.strategy!r} leaves nothing to train")
    groups = parameter_groups(model, learning_rate, config.optim.encoder_learning_rate)
    # fused: one kernel per step instead of a dozen passes over every parameter (CPU and CUDA; the
    # Trainer's default optimizer, adamw_torch_fused, is the same)
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, betas=config.optim.betas, eps=config.optim.eps,
                                  weight_decay=config.optim.weight_decay,
                                  fused=accelerator.device.type in ("cpu", "cuda"))
    plateau = WerPlateau(config.loop.plateau_factor, config.loop.plateau_patience,
                         floor=config.loop.min_learning_rate / learning_rate)
    overfit = OverfitWatch()
    warmup = int(config.loop.warmup_ratio * config.loop.max_steps)
    scheduler = warmup_schedule(optimizer, warmup, config.loop.max_steps, plateau,
                                decay=config.loop.schedule == "linear")
    model, optimizer = accelerator.prepare(model, optimizer)
    # Without accelerate's fp16 autocast wrapper on forward: the loop enters its autocast itself, and
    # evaluation (generate on loaded.model) decodes in fp32 like the base model it is compared with.
    loaded.model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)

    checkpoints = output_dir / "checkpoints"
    metrics_path = output_dir / "metrics.jsonl"
    state = _State()
    if resume:
        state = _load_last(checkpoints / LAST, loaded.model, optimizer, scheduler)
        plateau.scale, plateau.best, plateau.changes = state.lr_scale, state.best_wer, state.lr_changes
    save_config(config, output_dir / "config.yaml")  # after a resume has loaded: a failed one changes nothing
    writer = SummaryWriter(str(output_dir / "tensorboard")) if accelerator.is_main_process else None

    def evaluate_and_keep(step: int) -> bool:
        """Score the eval subset; keep the checkpoint if it is the best. Returns True to stop early."""
        evaluation = _evaluate(loaded, eval_subset, config)
        wer = evaluation.scores.wer
        # The forgetting budget: with general sets, only checkpoints whose general WER rose by at most
        # loop.forgetting_budget compete on target WER (see asrtune.evaluation.forgetting).
        general = {name: transcripts_of(_evaluate(loaded, subset, config), subset, config.language)
                   for name, subset in general_subsets.items()}
        rises = forgetting_of(general, base_runs) if general else {}
        forgetting = max(rises.values()) if rises else None
        budget = config.loop.forgetting_budget
        kept_rank = (checkpoint_rank(state.best_wer, state.best_forgetting, budget)
                     if state.best_step >= 0 else None)
        improved = is_better(checkpoint_rank(wer, forgetting, budget), kept_rank)
        if improved:
            state.best_wer, state.best_step, state.evals_without_improvement = wer, step, 0
            state.best_forgetting = forgetting
            write_dir_atomically(checkpoints / BEST, lambda folder: save_trainable(
                loaded.model, folder, {"step": step, "wer": wer, "strategy": config.strategy,
                                       "general_wer_rise": rises or None}))
        else:
            state.evals_without_improvement += 1
        if state.baseline is None:
            state.baseline = evaluation.summary()
        mean_loss = sum(state.loss_since_eval) / len(state.loss_since_eval) if state.loss_since_eval else None
        state.loss_since_eval = []
        warning = overfit.observe(mean_loss, wer)
        if warning:
            state.warnings.append(warning)
            tqdm.write(f"warning: {warning}")
        change = plateau.observe(step, wer)
        if change:
            state.lr_scale = plateau.scale
            state.lr_changes = plateau.changes
            tqdm.write(f"step {step}: LR x{change['scale_to']:.3g} of schedule ({change['reason']})")
            _append_jsonl(metrics_path, {"step": step, "lr_change": change})
        record = {"step": step, "eval_wer": wer, "eval_cer": evaluation.scores.cer, "best_wer": state.best_wer,
                  "kept": improved}
        if rises:
            record.update(general_wer_rise=rises, within_budget=within_budget(forgetting, budget))
            tqdm.write(f"step {step}: general WER rise {forgetting:+.4f} (budget {budget:.4f})")
        _append_jsonl(metrics_path, record)
        if writer:
            writer.add_scalar("eval/wer", wer, step)
            writer.add_scalar("eval/cer", evaluation.scores.cer, step)
        tqdm.write(f"step {step}: eval WER {wer:.4f} (best {state.best_wer:.4f} at step {state.best_step})"
                   + ("  kept" if improved else ""))
        patience = config.loop.patience
        return patience is not None and state.evals_without_improvement >= patience

    if state.step == 0 and state.baseline is None and config.loop.eval_at_start:
        evaluate_and_keep(0)
        _save_last(checkpoints, loaded.model, optimizer, scheduler, state)

    cache_started = time.perf_counter()
    plan, encoded = _encoder_cache(config, loaded.model, train_set, accelerator, precision, progress)
    cache_record = {"layers": plan.layers, "whole": plan.whole, "utterances": len(encoded),
                    "seconds": round(time.perf_counter() - cache_started, 3)} if encoded is not None else None
    cache_seconds = time.perf_counter() - cache_started  # part of the training cost (a sweep's speed-up)
    augmenter = Augmenter.from_spec(config.data.augment, config.seed)
    short_input = _short_input(config, encoded is not None, world=accelerator.num_processes)

    accum = config.loop.grad_accum_steps
    world, rank = accelerator.num_processes, accelerator.process_index
    stopped_early = False
    model.train()
    bar = tqdm(total=config.loop.max_steps, initial=state.step, desc="train", unit="step",
               disable=not (progress and accelerator.is_main_process))
    running_loss = 0.0
    while state.step < config.loop.max_steps:
        step_started = time.perf_counter()
        for micro in range(accum):
            draw = state.step * accum + micro
            indices = _batch(config, train_set, config.loop.batch_size * world, draw)[rank::world]
            batch = collate([augmented_item(train_set, i, augmenter, draw) if augmenter else train_set[i]
                             for i in indices], pad_to_multiple_of=LABEL_PAD_MULTIPLE)
            labels = batch["labels"].to(accelerator.device)
            sync = micro == accum - 1
            context = accelerator.no_sync(model) if not sync and world > 1 else nullcontext()
            with context, step_autocast(precision, accelerator):
                if encoded is not None:  # the cached prefix, then the trainable encoder layers above it
                    prefix = torch.stack([encoded[i] for i in indices]).to(accelerator.device)
                    inputs = {"encoder_outputs": (encode_top(loaded.model, prefix, plan),)}
                elif short_input:
                    features = batch["input_features"].to(accelerator.device)
                    frames = short_input_frames(batch["frames"], features.shape[-1])
                    inputs = {"encoder_outputs": (encode_short(loaded.model, features, frames),)}
                else:
                    inputs = {"input_features": batch["input_features"].to(accelerator.device)}
                loss = model(**inputs, labels=labels).loss / accum
                accelerator.backward(loss)
            running_loss += loss.item()
        if config.optim.max_grad_norm is not None:
            accelerator.clip_grad_norm_(params, config.optim.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{running_loss:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if writer and state.step % config.loop.log_every == 0:
            writer.add_scalar("train/loss", running_loss, state.step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], state.step)
        state.loss_since_eval.append(running_loss)
        _append_jsonl(metrics_path, {"step": state.step, "loss": running_loss, "lr": scheduler.get_last_lr()[0],
                                     "seconds": round(time.perf_counter() - step_started, 4)})
        running_loss = 0.0
        if state.step % config.loop.eval_every == 0 or state.step == config.loop.max_steps:
            model.eval()
            stop = evaluate_and_keep(state.step)
            model.train()
            _save_last(checkpoints, loaded.model, optimizer, scheduler, state)
            if stop:
                stopped_early = True
                tqdm.write(f"early stop: {config.loop.patience} evaluations without a better WER")
                break
    bar.close()
    if writer:
        writer.close()

    results = {
        "model": str(output_dir),
        "base_model": config.model,
        "strategy": config.strategy,
        "learning_rate": learning_rate,
        "encoder_learning_rate": config.optim.encoder_learning_rate or learning_rate,
        "learning_rate_source": config.optim.learning_rate_source
        or ("config" if config.optim.learning_rate else "strategy default"),
        "lr_changes": state.lr_changes,
        "encoder_cache": cache_record,
        "mixed_precision": precision,
        "warnings": state.warnings,
        "steps": state.step,
        "best_step": state.best_step,
        "stopped_early": stopped_early,
        "baseline_subset": state.baseline,
        "best_subset_wer": state.best_wer,
    }
    if not final_evaluation:
        return results
    # Final: the kept (lowest-WER) checkpoint on the whole eval set.
    load_trainable(loaded.model, checkpoints / BEST)
    final = _evaluate(loaded, eval_set, config)
    write_predictions(final, output_dir / "predictions.jsonl")
    tuned_runs = {"eval": transcripts_of(final, eval_set, config.language),
                  **decode_sets(loaded, {k: v for k, v in eval_sets.items() if k != "eval"}, config,
                                device=accelerator.device)}
    write_set_predictions(output_dir / "evaluation", tuned_runs, base_runs)
    results = {
        **results,
        "final": final.summary(),
        "final_wer": final.scores.wer,
        "final_raw_wer": final.scores.raw_wer,
        "trainable_params": trainable,
        "total_params": base_total,
        "trainable_percent": 100.0 * trainable / base_total,
        "evaluation": evidence(eval_sets, tuned_runs, base_runs),
        "forgetting_budget": config.loop.forgetting_budget if config.data.general else None,
        "best_general_wer_rise": state.best_forgetting,
        "best_within_budget": within_budget(state.best_forgetting, config.loop.forgetting_budget),
        "train_seconds": round(time.perf_counter() - started, 2),
        "encoder_cache_seconds": round(cache_seconds, 2),
        "git_sha": _git_sha(),
        "config_hash": config_hash(config),
        "config": config_to_dict(config),
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results

