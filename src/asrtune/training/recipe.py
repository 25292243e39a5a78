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
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from asrtune.config import RunConfig, absolute_model, config_from_dict, config_hash, config_to_dict, parse_yaml, save_config
from asrtune.data.features import FeatureDataset, collate
from asrtune.data.manifest import read_manifest
from asrtune.data.sampler import batch_indices
from asrtune.errors import AsrtuneError
from asrtune.evaluation.decode import Evaluation, evaluate_dataset, write_predictions
from asrtune.inspection import count_parameters
from asrtune.models.load import LoadedModel, load_model
from asrtune.strategies import apply_strategy, default_learning_rate
from asrtune.training.checkpoint import BEST, LAST, load_trainable, save_trainable, write_dir_atomically
from asrtune.training.encoder_cache import cache_bytes, encode_dataset, encoder_is_frozen

__all__ = ["train"]


@dataclass
class _State:
    """What a resumed run needs besides weights and optimizer."""

    step: int = 0
    best_wer: float = float("inf")
    best_step: int = -1
    evals_without_improvement: int = 0
    baseline: dict | None = None


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
    common = dict(processor=loaded.processor, multilingual=loaded.multilingual, language=config.language,
                  task=config.task, progress=progress)
    train_rows = read_manifest(config.data.train)
    eval_rows = read_manifest(config.data.eval)
    train_set = FeatureDataset(train_rows, desc="features train", **common)
    eval_set = FeatureDataset(eval_rows, desc="features eval", **common)
    limited = eval_set.head(config.data.eval_limit) if config.data.eval_limit else eval_set
    return train_set, eval_set, limited


def _encoder_cache(config: RunConfig, model: torch.nn.Module, train_set: FeatureDataset,
                   accelerator: Accelerator, progress: bool) -> list[torch.Tensor] | None:
    """Encoder outputs of the training set when the encoder is frozen and they fit the memory bound."""
    if not encoder_is_frozen(model):
        return None
    needed = cache_bytes(model, len(train_set)) / 2**20
    if needed > config.loop.encoder_cache_mb:
        tqdm.write(f"encoder frozen, but caching its outputs needs {needed:.0f} MB "
                   f"> loop.encoder_cache_mb={config.loop.encoder_cache_mb}: encoding every step instead")
        return None
    return encode_dataset(model, train_set, batch_size=config.loop.eval_batch_size, device=accelerator.device,
                          progress=progress and accelerator.is_main_process)


def train(config: RunConfig, output_dir: str | Path, *, resume: bool = False, progress: bool = True) -> dict:
    """Fine-tune ``config.model`` with ``config.strategy``; returns what ``results.json`` holds.

    Args:
        config: the resolved run config.
        output_dir: the run folder (created; must not already hold a run unless ``resume``).
        resume: continue from ``checkpoints/last``.
        progress: show tqdm bars.
    """
    output_dir = Path(output_dir)
    config = dataclasses.replace(config, model=absolute_model(config.model, Path.cwd()))
    _prepare_run_dir(output_dir, resume, config)
    started = time.perf_counter()
    set_seed(config.seed)
    accelerator = Accelerator(mixed_precision=config.loop.mixed_precision)

    base = load_model(config.model)
    _, base_total = count_parameters(base.model)
    model = apply_strategy(base.model, config.strategy)
    trainable, _ = count_parameters(model)
    loaded = LoadedModel(model=model, processor=base.processor, source=config.model, strategy=config.strategy)
    train_set, eval_set, eval_subset = _datasets(config, loaded, progress and accelerator.is_main_process)

    learning_rate = config.optim.learning_rate or default_learning_rate(config.strategy)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise AsrtuneError(f"strategy {config.strategy!r} leaves nothing to train")
    optimizer = torch.optim.AdamW(params, lr=learning_rate, betas=config.optim.betas, eps=config.optim.eps,
                                  weight_decay=config.optim.weight_decay)
    warmup = int(config.loop.warmup_ratio * config.loop.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, config.loop.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    loaded.model = accelerator.unwrap_model(model)

    checkpoints = output_dir / "checkpoints"
    metrics_path = output_dir / "metrics.jsonl"
    state = _State()
    if resume:
        state = _load_last(checkpoints / LAST, loaded.model, optimizer, scheduler)
    save_config(config, output_dir / "config.yaml")  # after a resume has loaded: a failed one changes nothing
    writer = SummaryWriter(str(output_dir / "tensorboard")) if accelerator.is_main_process else None

    def evaluate_and_keep(step: int) -> bool:
        """Score the eval subset; keep the checkpoint if it is the best. Returns True to stop early."""
        evaluation = _evaluate(loaded, eval_subset, config)
        wer = evaluation.scores.wer
        improved = wer < state.best_wer
        if improved:
            state.best_wer, state.best_step, state.evals_without_improvement = wer, step, 0
            write_dir_atomically(checkpoints / BEST, lambda folder: save_trainable(
                loaded.model, folder, {"step": step, "wer": wer, "strategy": config.strategy}))
        else:
            state.evals_without_improvement += 1
        if state.baseline is None:
            state.baseline = evaluation.summary()
        record = {"step": step, "eval_wer": wer, "eval_cer": evaluation.scores.cer, "best_wer": state.best_wer,
                  "kept": improved}
        _append_jsonl(metrics_path, record)
        if writer:
            writer.add_scalar("eval/wer", wer, step)
            writer.add_scalar("eval/cer", evaluation.scores.cer, step)
        tqdm.write(f"step {step}: eval WER {wer:.4f} (best {state.best_wer:.4f} at step {state.best_step})"
                   + ("  kept" if improved else ""))
        patience = config.loop.patience
        return patience is not None and state.evals_without_improvement >= patience

    if state.step == 0 and state.baseline is None:
        evaluate_and_keep(0)
        _save_last(checkpoints, loaded.model, optimizer, scheduler, state)

    encoded = _encoder_cache(config, loaded.model, train_set, accelerator, progress)

    accum = config.loop.grad_accum_steps
    world, rank = accelerator.num_processes, accelerator.process_index
    stopped_early = False
    model.train()
    bar = tqdm(total=config.loop.max_steps, initial=state.step, desc="train", unit="step",
               disable=not (progress and accelerator.is_main_process))
    running_loss = 0.0
    while state.step < config.loop.max_steps:
        for micro in range(accum):
            indices = batch_indices(len(train_set), config.loop.batch_size * world, config.seed,
                                    state.step * accum + micro)[rank::world]
            batch = collate([train_set[i] for i in indices])
            labels = batch["labels"].to(accelerator.device)
            if encoded is not None:
                inputs = {"encoder_outputs": (torch.stack([encoded[i] for i in indices]).to(accelerator.device),)}
            else:
                inputs = {"input_features": batch["input_features"].to(accelerator.device)}
            sync = micro == accum - 1
            context = accelerator.no_sync(model) if not sync and world > 1 else nullcontext()
            with context, accelerator.autocast():
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
        _append_jsonl(metrics_path, {"step": state.step, "loss": running_loss, "lr": scheduler.get_last_lr()[0]})
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

    # Final: the kept (lowest-WER) checkpoint on the whole eval set.
    load_trainable(loaded.model, checkpoints / BEST)
    final = _evaluate(loaded, eval_set, config)
    write_predictions(final, output_dir / "predictions.jsonl")
    results = {
        "model": str(output_dir),
        "base_model": config.model,
        "strategy": config.strategy,
        "learning_rate": learning_rate,
        "steps": state.step,
        "best_step": state.best_step,
        "stopped_early": stopped_early,
        "baseline_subset": state.baseline,
        "best_subset_wer": state.best_wer,
        "final": final.summary(),
        "final_wer": final.scores.wer,
        "final_raw_wer": final.scores.raw_wer,
        "trainable_params": trainable,
        "total_params": base_total,
        "trainable_percent": 100.0 * trainable / base_total,
        "train_seconds": round(time.perf_counter() - started, 2),
        "git_sha": _git_sha(),
        "config_hash": config_hash(config),
        "config": config_to_dict(config),
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results

