"""The training recipe: one class on accelerate, read top to bottom.

``Recipe.setup`` builds the model (strategy applied), the data (lazy features, a stateful loader
over global batches), the optimizer and the evaluator; ``Recipe.train`` runs the loop:
:meth:`train_step` (AdamW, linear warm-up then decay, accumulation, clipping, non-finite steps
skipped), :meth:`evaluate` every ``loop.eval_every`` steps (the kept checkpoint is the lowest eval
WER under the forgetting budget; ``loop.patience`` evaluations without improvement stop the run),
:meth:`save_checkpoint` / :meth:`load_checkpoint` (exact resume), and :meth:`finalize` (the kept
checkpoint scored on every set, ``results.json``). Step 0 is evaluated too, so the kept checkpoint
is never worse than the model we started from.

Several processes (torchrun, ``accelerate launch``): ``loop.batch_size`` is per process; the loss is
normalised over the global batch's target tokens, so N processes with batch B train as one with
batch N x B; evaluation is split across processes and gathered; keep/stop/LR decisions are made by
the main process and sent to the others; only the main process writes files and prints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
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
from asrtune.data.manifest import manifests_digest, read_manifest
from asrtune.data.sampler import GlobalBatches, RankBatchSampler
from asrtune.errors import AsrtuneError
from asrtune.evaluation.decode import Evaluation, evaluate_dataset, write_predictions
from asrtune.evaluation.forgetting import Transcripts, forgetting_of, within_budget
from asrtune.evaluation.hallucination import hallucination_stats
from asrtune.evaluation.metrics import score
from asrtune.evaluation.sets import (GENERAL, base_transcripts, build_eval_sets, decode_sets, evidence,
                                     pristine_copy, scoring_language, transcripts_of, write_set_predictions)
from asrtune.inspection import count_parameters
from asrtune.models.load import LoadedModel
from asrtune.models.new_language import apply_config_language
from asrtune.models.short_input import short_input_frames
from asrtune.provenance import run_provenance
from asrtune.strategies import apply_strategy, default_learning_rate
from asrtune.training.checkpoint import (BEST, LAST, load_trainable, load_training_state, rng_state, trainable_state,
                                         save_trainable, save_training_state, set_rng_state, write_dir_atomically)
from asrtune.training.distributed import Processes, check_launch
from asrtune.training.encoder_cache import CachePlan, PrefixCache, cache_plan, encode_prefix, prefix_shape
from asrtune.training.faults import NonFiniteGuard
from asrtune.training.init_from import init_from_record, load_start_model
from asrtune.training.interpolation import START, load_start, mix_trainable
from asrtune.training.lr_control import OverfitWatch, WerPlateau, parameter_groups, warmup_schedule
from asrtune.training.precision import accelerator_mixed_precision, resolve_mixed_precision, step_autocast
from asrtune.training.run_dir import RunDir
from asrtune.training.selection import CheckpointSelector
from asrtune.training.step import TrainingForward

__all__ = ["Recipe", "SharedPrefix", "train"]

LABEL_PAD_MULTIPLE = 8  # training batches' label length rounds up to this (see collate)
_FIXED_ON_RESUME = ("model", "strategy", "init_from", "language", "language_init", "task", "seed", "data")
_OPTIM_ON_RESUME = ("learning_rate", "encoder_learning_rate", "projector_learning_rate", "weight_decay", "betas",
                    "eps")


@dataclass
class SharedPrefix:
    """A frozen-prefix cache that runs in one process hand on (lr-search trials, resumed rungs): frozen
    weights come from the base model whatever the run's seed or learning rate, so a run whose cache
    key matches reuses the outputs."""

    cache: PrefixCache | None = None


@dataclass
class Counters:
    """The run's plain counters, saved with every checkpoint."""

    step: int = 0
    baseline: dict | None = None
    loss_since_eval: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    samples: int = 0
    train_seconds: float = 0.0


def _evaluate(loaded: LoadedModel, dataset: FeatureDataset, config: RunConfig) -> Evaluation:
    """Greedy decoding and scores of one set (one process's share of it, with several)."""
    return evaluate_dataset(loaded, dataset, language=config.language, task=config.task,
                            batch_size=config.loop.eval_batch_size, max_new_tokens=config.loop.max_new_tokens,
                            progress=False)


def default_num_workers(local_processes: int) -> int:
    """DataLoader workers per process: the cores left after one per training process, at most 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores // max(1, local_processes) - 1))


class _TrainItems(torch.utils.data.Dataset):
    """The training set read by ``(item, draw)`` keys: augmented per draw when augmentation is on."""

    def __init__(self, dataset: FeatureDataset, augmenter: Augmenter | None) -> None:
        self.dataset, self.augmenter = dataset, augmenter

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, draw = key
        item = augmented_item(self.dataset, index, self.augmenter, draw) if self.augmenter else self.dataset[index]
        return {**item, "draw": draw}


def _collate_training(items: list[dict]) -> dict:
    batch = collate(items, pad_to_multiple_of=LABEL_PAD_MULTIPLE)
    batch["draw"] = items[0]["draw"]
    return batch


class Recipe:
    """One fine-tuning run.

    Args:
        config: the resolved run config.
        output_dir: the run folder (created; must not already hold a run unless ``resume``).
        resume: continue from ``checkpoints/last``.
        progress: show progress bars (main process only).
        final_evaluation: score the kept checkpoint on every set at the end (lr-search trials skip
            it: their score is the last evaluation).
        baseline_transcripts: the base model's transcripts of the run's sets, when already known (a
            sweep decodes them once per dataset); missing sets are decoded here.
        shared_prefix: a frozen-prefix cache to reuse and hand on (see :class:`SharedPrefix`).
    """

    def __init__(self, config: RunConfig, output_dir: str | Path, *, resume: bool = False, progress: bool = True,
                 final_evaluation: bool = True, baseline_transcripts: dict[str, Transcripts] | None = None,
                 shared_prefix: SharedPrefix | None = None) -> None:
        self.config = dataclasses.replace(config, model=absolute_model(config.model, Path.cwd()))
        self.run = RunDir(Path(output_dir))
        self.resume, self.progress, self.final_evaluation = resume, progress, final_evaluation
        self.given_transcripts = baseline_transcripts
        self.shared_prefix = shared_prefix or SharedPrefix()
        self.started = time.perf_counter()

    # --- setup ------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Model, data, optimizer and evaluator; the run folder checked before anything trains."""
        config = self.config
        check_launch()
        self.precision = resolve_mixed_precision(config.loop.mixed_precision)
        # cpu=True where torch sees no accelerator: accelerate then forms a gloo group under torchrun
        # (without it, accelerate 1.16 gives every torchrun rank a world of its own)
        self.accelerator = Accelerator(mixed_precision=accelerator_mixed_precision(self.precision),
                                       cpu=torch.accelerator.current_accelerator() is None)
        self.processes = Processes(self.accelerator)
        if not self.processes.is_main:
            warnings.simplefilter("ignore")  # the main process reports; N copies of each warning help nobody
        self._on_main(self._check_run_dir)
        set_seed(config.seed)
        if config.loop.mixed_precision == "auto" and self.progress:
            self.say(f"loop.mixed_precision=auto: training in {'bf16 autocast' if self.precision == 'bf16' else 'fp32'}"
                     f" on {self.accelerator.device.type} (evaluation decodes in fp32)")
        self._setup_model()
        self._setup_data()
        self._setup_evaluator()
        self._setup_optimizer()
        self.counters = Counters()
        if self.resume:
            self.load_checkpoint()
        if self.processes.is_main:
            save_config(config, self.run.config)  # after a resume has loaded: a failed one changes nothing
        self.writer = (SummaryWriter(str(self.run.tensorboard), purge_step=self.counters.step + 1 if self.resume
                                     else None) if self.processes.is_main else None)

    def _check_run_dir(self) -> None:
        run = self.run
        if self.resume:
            if not (run.checkpoints / LAST / "state.json").is_file():
                raise AsrtuneError(f"--resume: no checkpoint to resume in {run.root}")
            saved = config_to_dict(config_from_dict(parse_yaml(run.config.read_text())))
            wanted = config_to_dict(self.config)
            changed = [key for key in _FIXED_ON_RESUME if saved[key] != wanted[key]]
            if changed:
                raise AsrtuneError(f"--resume: the run's config.yaml has another {', '.join(changed)}; "
                                   "a resumed run may change only optim and loop settings")
        elif run.holds_a_run():
            raise AsrtuneError(f"{run.root} already holds a run; pass --resume to continue it, "
                               "or choose another --output-dir (asrtune never overwrites a run)")
        run.check_writable()

    def _setup_model(self) -> None:
        config = self.config
        if not config.data.train or not config.data.eval:
            raise AsrtuneError("data.train and data.eval must name manifests")
        base = load_start_model(config)  # config.model, or the kept weights of the run init_from names
        self.init_from = init_from_record(config.init_from) if config.init_from else None
        apply_config_language(base, config)  # language: new:xx,init=yy grows the vocabulary by one token
        _, self.base_total = count_parameters(base.model)
        self.pristine = pristine_copy(base, self.run.base_transcripts, self.given_transcripts)
        model = apply_strategy(base.model, config.strategy)
        self.trainable, _ = count_parameters(model)
        self.loaded = LoadedModel(model=model, processor=base.processor, source=config.model,
                                  strategy=config.strategy)
        self.learning_rate = config.optim.learning_rate or default_learning_rate(config.strategy, base.family.name)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise AsrtuneError(f"strategy {config.strategy!r} leaves nothing to train")

    def _setup_data(self) -> None:
        config, loaded, processes = self.config, self.loaded, self.processes
        cache = FeatureCache.for_extractor(loaded.processor.feature_extractor) if config.data.feature_cache else None
        common = dict(processor=loaded.processor, multilingual=loaded.multilingual, language=config.language,
                      task=config.task, cache=cache)
        self.train_set = FeatureDataset(read_manifest(config.data.train), **common)
        self.eval_set = FeatureDataset(read_manifest(config.data.eval), **common)
        limit = config.data.eval_limit
        self.eval_subset = self.eval_set.sample(limit, config.seed) if limit else self.eval_set
        self.augmenter = Augmenter.from_spec(config.data.augment, config.seed)
        self.batches = GlobalBatches(self.train_set.durations, batch_size=config.loop.batch_size,
                                     world=processes.world, seed=config.seed, n_buckets=config.data.duration_buckets,
                                     max_batch_seconds=config.loop.max_batch_seconds)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", processes.world if processes.world > 1 else 1))
        workers = config.loop.num_workers if config.loop.num_workers is not None else default_num_workers(local)
        self.num_workers = workers
        with warnings.catch_warnings():  # torchdata calls a deprecated torch.set_vital on construction
            warnings.simplefilter("ignore", UserWarning)
            from torchdata.stateful_dataloader import StatefulDataLoader

            self.loader = StatefulDataLoader(
                _TrainItems(self.train_set, self.augmenter), batch_sampler=RankBatchSampler(self.batches, processes.rank),
                num_workers=workers, prefetch_factor=2 if workers else None, collate_fn=_collate_training,
                pin_memory=self.accelerator.device.type == "cuda",
                # its own generator: starting an iterator then draws nothing from the global RNG, which a
                # resumed run restores (LoRA dropout draws from it)
                generator=torch.Generator().manual_seed(config.seed))
        self.plan, self.short_input = self._encoder_plan()

    def _encoder_plan(self) -> tuple[CachePlan | None, bool]:
        """The frozen encoder prefix to cache (or None), and whether steps cut the encoder input."""
        config, say = self.config, self.say
        plan = cache_plan(self.loaded.model)
        if plan is not None and config.data.augment:
            say(f"encoder prefix frozen, but data.augment={config.data.augment!r} changes its inputs every step: "
                "encoding every step instead of caching")
            plan = None
        if plan is not None and config.loop.encoder_cache_mb <= 0:
            plan = None
        if plan is not None and not plan.whole and config.loop.short_input:
            say(f"loop.short_input: the encoder runs from its stem on each batch's cut window instead of caching "
                f"{plan.layers} frozen layer(s) of the 30 s one")
            plan = None
        if not config.loop.short_input:
            return plan, False
        if self.loaded.family.name != "whisper":
            raise AsrtuneError(f"loop.short_input: the {self.loaded.family.name} audio encoder takes its full "
                               "window only; set loop.short_input to false")
        if plan is not None:
            say("loop.short_input: the whole encoder is frozen and its outputs cached, which costs less; using the "
                "cache")
            return plan, False
        return None, True

    def _setup_evaluator(self) -> None:
        """Evidence sets (eval, test, general, non-speech) and the base model's transcripts of them."""
        config, processes = self.config, self.processes
        show = self.progress and processes.is_main
        def build(write_clips: bool) -> None:
            self.eval_sets = build_eval_sets(config, self.loaded, self.run.nonspeech, eval_set=self.eval_set,
                                             progress=show, write_clips=write_clips)

        self._on_main(lambda: build(write_clips=True))
        if not processes.is_main:  # the main process wrote the non-speech clips; the others only name them
            build(write_clips=False)
        limit = config.data.eval_limit
        # During training the general sets serve the forgetting budget only: with none (inf) they are
        # scored before and after, not at every evaluation.
        budgeted = not math.isinf(config.loop.forgetting_budget)
        self.general_subsets = {name: s.dataset.sample(limit, config.seed) if limit else s.dataset
                                for name, s in self.eval_sets.items() if s.role == GENERAL and budgeted}
        needed = self.final_evaluation or self.general_subsets
        self.base_runs = base_transcripts(config, self.eval_sets, self.run.base_transcripts,
                                          given=self.given_transcripts, device=self.accelerator.device,
                                          progress=show, base=self.pristine, processes=processes) if needed else None
        self.pristine = None

    def _setup_optimizer(self) -> None:
        config, accelerator = self.config, self.accelerator
        groups = parameter_groups(self.loaded.model, self.learning_rate, config.optim.encoder_learning_rate,
                                  config.optim.projector_learning_rate)
        # fused: one kernel per step instead of a dozen passes over every parameter (CPU and CUDA; the
        # Trainer's default optimizer, adamw_torch_fused, is the same)
        optimizer = torch.optim.AdamW(groups, lr=self.learning_rate, betas=config.optim.betas, eps=config.optim.eps,
                                      weight_decay=config.optim.weight_decay,
                                      fused=accelerator.device.type in ("cpu", "cuda"))
        self.plateau = WerPlateau(config.loop.plateau_factor, config.loop.plateau_patience,
                                  floor=config.loop.min_learning_rate / self.learning_rate)
        self.overfit = OverfitWatch()
        self.selector = CheckpointSelector(budget=config.loop.forgetting_budget, patience=config.loop.patience)
        self.guard = NonFiniteGuard(config.loop.max_nonfinite_steps)
        warmup = int(config.loop.warmup_ratio * config.loop.max_steps)
        self.scheduler = warmup_schedule(optimizer, warmup, config.loop.max_steps, self.plateau,
                                         decay=config.loop.schedule == "linear")
        self.forward, self.optimizer = accelerator.prepare(TrainingForward(self.loaded.model, self.plan), optimizer)
        # Evaluation calls generate on the bare model: without accelerate's autocast wrapper it decodes in
        # fp32, like the base model it is compared with.
        self.loaded.model = accelerator.unwrap_model(self.forward, keep_fp32_wrapper=False).model
        self.prefix_cache = self._prefix_cache()

    def _prefix_cache(self) -> PrefixCache | None:
        if self.plan is None:
            return None
        model = self.loaded.model
        key = (self.config.model, self.plan, tuple(u.audio for u in self.train_set.utterances),
               str(self.accelerator.device), next(model.parameters()).dtype, self.precision,
               self.processes.rank, self.processes.world)
        shared = self.shared_prefix.cache
        if shared is not None and shared.key == key:
            return shared
        if shared is not None:
            shared.close()
        cache = PrefixCache(key, prefix_shape(model, self.loaded.processor),
                            memory_mb=self.config.loop.encoder_cache_mb,
                            spill_dir=self.run.encoder_cache / f"rank{self.processes.rank}",
                            n_items=len(self.train_set))
        self.shared_prefix.cache = cache
        return cache

    # --- the loop ---------------------------------------------------------------------------------------

    def train(self) -> dict:
        """Run setup, the loop and finalize; returns what ``results.json`` holds."""
        self.setup()
        config, counters = self.config, self.counters
        if counters.step == 0 and config.loop.interpolation:
            self._save_start()
        if counters.step == 0 and counters.baseline is None and config.loop.eval_at_start:
            self.evaluate(0)
            self.save_checkpoint()
        self.stopped_early = False
        self.first_step_seconds = None
        self.forward.train()
        bar = tqdm(total=config.loop.max_steps, initial=counters.step, desc="train", unit="step",
                   disable=not (self.progress and self.processes.is_main))
        batches = iter(self.loader)
        save_every = config.loop.save_every
        while counters.step < config.loop.max_steps:
            started = time.perf_counter()
            loss, applied = self.train_step([next(batches) for _ in range(config.loop.grad_accum_steps)])
            counters.train_seconds += time.perf_counter() - started
            if self.first_step_seconds is None:
                self.first_step_seconds = time.perf_counter() - self.started
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            step = counters.step
            if step % config.loop.eval_every == 0 or step == config.loop.max_steps:
                self.forward.eval()
                stop = self.evaluate(step)
                self.forward.train()
                self.save_checkpoint()
                if stop:
                    self.stopped_early = True
                    self.say(f"early stop: {config.loop.patience} evaluations without a better WER")
                    break
            elif save_every and step % save_every == 0:
                self.save_checkpoint()
        bar.close()
        if config.loop.interpolation:
            self.score_interpolations()
        if self.writer:
            self.writer.close()
        return self.finalize()

    def _save_start(self) -> None:
        """``checkpoints/start``: the trainable parameters before any step, for weight interpolation."""
        if self.processes.is_main:
            write_dir_atomically(self.run.checkpoints / START,
                                 lambda folder: save_trainable(self.loaded.model, folder, {"step": 0}))
        self.processes.barrier()

    def score_interpolations(self) -> None:
        """Score start + a x (end - start) for each ``loop.interpolation`` weight a; selection may keep one.

        The model ends with the end-of-training weights again (``checkpoints/last`` is untouched).
        """
        start = load_start(self.run.checkpoints / START)
        end = trainable_state(self.loaded.model)
        self.forward.eval()
        for weight in sorted(set(self.config.loop.interpolation), reverse=True):
            mix_trainable(self.loaded.model, start, end, weight)
            self.evaluate(self.counters.step, interpolation=weight)
        mix_trainable(self.loaded.model, start, end, 1.0)

    def train_step(self, micro_batches: list[dict]) -> tuple[float, bool]:
        """One optimizer step over ``grad_accum_steps`` micro-batches; returns (global mean loss, applied)."""
        config, accelerator, counters = self.config, self.accelerator, self.counters
        started = time.perf_counter()
        # Target tokens of the whole global step (every process, every micro-batch), from the sampler:
        # every process knows every global batch, so no communication is needed for the normaliser.
        numbers = [batch["draw"] for batch in micro_batches]
        tokens = sum(self.train_set.target_tokens(i) for n in numbers for i in self.batches[n].tolist())
        local_sum = 0.0
        for position, batch in enumerate(micro_batches):
            last = position == len(micro_batches) - 1
            sync = nullcontext() if last or self.processes.world == 1 else accelerator.no_sync(self.forward)
            with sync, step_autocast(self.precision, accelerator):
                loss_sum, _ = self.forward(**self._inputs(batch))
                accelerator.backward(loss_sum * (self.processes.world / tokens))
            local_sum += loss_sum.item()
        loss = self.processes.sum(local_sum) / tokens
        grad_norm = None
        if self.precision != "fp16":  # fp16: the gradient scaler skips overflowing steps itself
            max_norm = config.optim.max_grad_norm if config.optim.max_grad_norm is not None else math.inf
            grad_norm = float(accelerator.clip_grad_norm_(self.params, max_norm))
        elif config.optim.max_grad_norm is not None:
            accelerator.clip_grad_norm_(self.params, config.optim.max_grad_norm)
        applied = self.guard.check(counters.step + 1, loss, grad_norm)
        if applied:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        counters.step += 1
        counters.samples += sum(len(self.batches[n]) for n in numbers)
        lr = self.scheduler.get_last_lr()[0]
        record = {"step": counters.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                  "seconds": round(time.perf_counter() - started, 4)}
        if not applied:
            record["skipped"] = "non-finite loss or gradient: no update"
            self.say(f"step {counters.step}: non-finite loss {loss} / gradient norm {grad_norm}: skipped "
                     f"({self.guard.in_a_row} in a row, {self.guard.skipped} in all)")
        else:
            counters.loss_since_eval.append(loss)
        if self.processes.is_main:
            self.run.append_metric(record)
            if counters.step % config.loop.log_every == 0:
                self.writer.add_scalar("train/loss", loss, counters.step)
                self.writer.add_scalar("train/lr", lr, counters.step)
                if grad_norm is not None:
                    self.writer.add_scalar("train/grad_norm", grad_norm, counters.step)
        return loss, applied

    def _inputs(self, batch: dict) -> dict:
        device = self.accelerator.device
        inputs = {"labels": batch["labels"].to(device)}
        if self.prefix_cache is not None:  # the cached prefix; the trainable layers above it run in forward
            features = batch["input_features"]

            def encode(missing: list[int]) -> torch.Tensor:
                rows = [batch["index"].tolist().index(i) for i in missing]
                frames = {"frames": batch["frames"][rows]} if "feature_attention_mask" in batch else {}  # LLM families
                return encode_prefix(self.loaded.model, features[rows].to(device), self.plan, **frames)

            inputs["prefix"] = self.prefix_cache.get(batch["index"].tolist(), encode).to(device)
        else:
            inputs["input_features"] = batch["input_features"].to(device)
            if self.short_input:
                inputs["short_frames"] = short_input_frames(batch["frames"], batch["input_features"].shape[-1])
        for key in ("input_ids", "attention_mask", "feature_attention_mask"):  # LLM families
            if key in batch:
                inputs[key] = batch[key].to(device)
        return inputs

    # --- evaluation -------------------------------------------------------------------------------------

    def _score(self, dataset: FeatureDataset) -> Evaluation:
        """Decode and score a set, split across processes; every process gets the same result."""
        processes = self.processes
        if processes.world == 1:
            return _evaluate(self.loaded, dataset, self.config)
        part = _evaluate(self.loaded, dataset.shard(processes.rank, processes.world), self.config)
        mine = range(processes.rank, len(dataset), processes.world)
        by_index = dict(processes.gather(list(zip(mine, part.hypotheses, strict=True))))
        capped = set(processes.gather(part.capped_ids))
        hypotheses = [by_index[i] for i in range(len(dataset))]
        references, ids = [u.text for u in dataset.utterances], [u.id for u in dataset.utterances]
        return Evaluation(scores=score(references, hypotheses, scoring_language(dataset, self.config.language)),
                          hypotheses=hypotheses, references=references, ids=ids,
                          capped_ids=[i for i in ids if i in capped], max_new_tokens=part.max_new_tokens)

    def evaluate(self, step: int, interpolation: float | None = None) -> bool:
        """Score the eval subset (and general sets); keep the checkpoint if it is the best. True: stop.

        ``interpolation``: the weights are a mix of step 0 and ``step`` (see :meth:`score_interpolations`).
        """
        config = self.config
        evaluation = self._score(self.eval_subset)
        general = {name: transcripts_of(self._score(subset), subset, config.language)
                   for name, subset in self.general_subsets.items()}
        decision = self._on_main(lambda: self._decide(step, evaluation, general, interpolation))
        if not self.processes.is_main:
            self._load_decision_state(decision["state"])
        if decision["improved"]:
            self._write_best(step, evaluation.scores.wer, decision["rises"], interpolation)
        return decision["stop"]

    def _decide(self, step: int, evaluation: Evaluation, general: dict[str, Transcripts],
                interpolation: float | None = None) -> dict:
        """The main process's keep / stop / LR decisions for one evaluation (the others load its state)."""
        config, counters = self.config, self.counters
        wer = evaluation.scores.wer
        # The forgetting budget: with general sets, only checkpoints whose general WER rose by at most
        # loop.forgetting_budget compete on target WER (see asrtune.evaluation.forgetting).
        rises = forgetting_of(general, self.base_runs, config.loop.forgetting_measure) if general else {}
        forgetting = max(rises.values()) if rises else None
        improved = self.selector.observe(step, wer, forgetting, interpolation)
        if counters.baseline is None:
            counters.baseline = evaluation.summary()
        if interpolation is None:  # a mix of weights is no training progress: LR control does not see it
            self._watch_training(step, wer)
        record = {"step": step, "eval_wer": wer, "eval_cer": evaluation.scores.cer,
                  "best_wer": self.selector.best_wer, "kept": improved}
        if interpolation is not None:
            record["interpolation"] = interpolation
        if evaluation.references and len(evaluation.references) == len(evaluation.hypotheses):
            stats = hallucination_stats(evaluation.references, evaluation.hypotheses, config.language)
            record.update(loops=stats.loops, refusals=stats.refusals, too_long=stats.too_long)
        budget = config.loop.forgetting_budget
        what = f"step {step}" if interpolation is None else f"step 0 + {interpolation:g} x (step {step} - step 0)"
        if rises:
            record.update(general_wer_rise=rises, within_budget=within_budget(forgetting, budget))
            unit = " relative" if config.loop.forgetting_measure == "relative" else ""
            self.say(f"{what}: general WER rise {forgetting:+.4f}{unit} (budget {budget:.4f})")
        self.run.append_metric(record)
        if self.writer and interpolation is None:
            self.writer.add_scalar("eval/wer", wer, step)
            self.writer.add_scalar("eval/cer", evaluation.scores.cer, step)
        self.say(f"{what}: eval WER {wer:.4f} (best {self.selector.best_wer:.4f} at {self._kept_name()})"
                 + ("  kept" if improved else ""))
        return {"improved": improved, "rises": rises, "stop": self.selector.should_stop,
                "state": self._decision_state()}

    def _watch_training(self, step: int, wer: float) -> None:
        """Overfitting warnings and WER-driven LR changes, from the loss since the last evaluation."""
        counters = self.counters
        losses = counters.loss_since_eval
        mean_loss = sum(losses) / len(losses) if losses else None
        counters.loss_since_eval = []
        warning = self.overfit.observe(mean_loss, wer)
        if warning:
            counters.warnings.append(warning)
            self.say(f"warning: {warning}")
        change = self.plateau.observe(step, wer)
        if change:
            self.say(f"step {step}: LR x{change['scale_to']:.3g} of schedule ({change['reason']})")
            self.run.append_metric({"step": step, "lr_change": change})

    def _kept_name(self) -> str:
        selector = self.selector
        if selector.best_interpolation is None:
            return f"step {selector.best_step}"
        return f"step {selector.best_step} interpolated {selector.best_interpolation:g}"

    def _decision_state(self) -> dict:
        return {"selector": self.selector.state_dict(), "plateau": self.plateau.state_dict(),
                "overfit": self.overfit.state_dict(), "counters": dataclasses.asdict(self.counters)}

    def _load_decision_state(self, state: dict) -> None:
        self.selector.load_state_dict(state["selector"])
        self.plateau.load_state_dict(state["plateau"])
        self.overfit.load_state_dict(state["overfit"])
        saved = Counters(**state["counters"])
        self.counters.baseline, self.counters.warnings = saved.baseline, saved.warnings
        self.counters.loss_since_eval = saved.loss_since_eval

    def _write_best(self, step: int, wer: float, rises: dict, interpolation: float | None = None) -> None:
        if self.processes.is_main:
            write_dir_atomically(self.run.checkpoints / BEST, lambda folder: save_trainable(
                self.loaded.model, folder, {"step": step, "wer": wer, "strategy": self.config.strategy,
                                            "general_wer_rise": rises or None, "interpolation": interpolation}))
        self.processes.barrier()

    # --- checkpoints ------------------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """``checkpoints/last``: trainable weights and everything a resume needs, written atomically."""
        per_process = self.processes.gather([{"rng": rng_state(), "loader": self.loader.state_dict()}])
        if self.processes.is_main:
            state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "processes": per_process, "world_size": self.processes.world,
                     "counters": dataclasses.asdict(self.counters), "selector": self.selector.state_dict(),
                     "plateau": self.plateau.state_dict(), "overfit": self.overfit.state_dict(),
                     "guard": self.guard.state_dict(), "optim": config_to_dict(self.config.optim)}

            def write(folder: Path) -> None:
                save_trainable(self.loaded.model, folder, {"step": self.counters.step})
                save_training_state(folder, state)
                (folder / "state.json").write_text(json.dumps(  # the same, for people and scripts to read
                    {**state["counters"], **state["selector"], "nonfinite": state["guard"]}, indent=2))

            write_dir_atomically(self.run.checkpoints / LAST, write)
        self.processes.barrier()

    def load_checkpoint(self) -> None:
        """Restore ``checkpoints/last`` and make the run folder say only what that state has done."""
        folder = self.run.checkpoints / LAST
        load_trainable(self.loaded.model, folder)
        state = load_training_state(folder)
        if state["world_size"] != self.processes.world:
            raise AsrtuneError(f"--resume: the run was checkpointed with {state['world_size']} process(es), this "
                               f"launch has {self.processes.world}; resume with the same number")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        mine = state["processes"][self.processes.rank]
        self.loader.load_state_dict(mine["loader"])
        set_rng_state(mine["rng"])
        self.counters = Counters(**state["counters"])
        self.selector.load_state_dict(state["selector"])
        self.plateau.load_state_dict(state["plateau"])
        self.overfit.load_state_dict(state["overfit"])
        self.guard.load_state_dict(state["guard"])
        self._apply_new_optim(state["optim"])
        if self.processes.is_main:
            dropped = self.run.truncate_metrics(self.counters.step)
            self.say(f"resumed at step {self.counters.step}" +
                     (f" ({dropped} metrics record(s) after it dropped: those steps run again)" if dropped else ""))

    def _apply_new_optim(self, saved: dict) -> None:
        """A resume that changes optim.* takes the new values (recorded), never silently the old ones."""
        wanted = config_to_dict(self.config.optim)
        changed = {key: (saved.get(key), wanted[key]) for key in _OPTIM_ON_RESUME if saved.get(key) != wanted[key]}
        if not changed:
            return
        groups = parameter_groups(self.loaded.model, self.learning_rate, self.config.optim.encoder_learning_rate,
                                  self.config.optim.projector_learning_rate)
        peak = {group["name"]: group["lr"] for group in groups}
        optim = self.config.optim
        for index, group in enumerate(self.optimizer.param_groups):
            group["initial_lr"] = peak.get(group.get("name"), self.learning_rate)
            group["betas"], group["eps"], group["weight_decay"] = tuple(optim.betas), optim.eps, optim.weight_decay
            self.scheduler.base_lrs[index] = group["initial_lr"]
            group["lr"] = group["initial_lr"] * self.scheduler.lr_lambdas[index](self.scheduler.last_epoch)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        text = ", ".join(f"optim.{key} {old} -> {new}" for key, (old, new) in changed.items())
        self.say(f"--resume: applying the new {text}")
        if self.processes.is_main:
            self.run.append_metric({"step": self.counters.step, "optim_change": {k: list(v) if isinstance(v, tuple)
                                                                                  else v for k, v in changed.items()}})

    # --- the end ----------------------------------------------------------------------------------------

    def finalize(self) -> dict:
        """Score the kept checkpoint on every set, write predictions and ``results.json``."""
        config, counters, processes = self.config, self.counters, self.processes
        cache_stats = self.prefix_cache.stats() if self.prefix_cache is not None else None
        results = {
            "model": str(self.run.root),
            "base_model": config.model,
            "strategy": config.strategy,
            "learning_rate": self.learning_rate,
            "encoder_learning_rate": config.optim.encoder_learning_rate or self.learning_rate,
            "learning_rate_groups": {group["name"]: group["initial_lr"] for group in self.optimizer.param_groups},
            "learning_rate_source": config.optim.learning_rate_source
            or ("config" if config.optim.learning_rate else "strategy default"),
            "lr_changes": self.plateau.changes,
            "encoder_cache": {"layers": self.plan.layers, "whole": self.plan.whole, **cache_stats}
            if cache_stats else None,
            "mixed_precision": self.precision,
            "world_size": processes.world,
            "global_batch_size": self._global_batch_size(),
            "num_workers": self.num_workers,
            "warnings": counters.warnings,
            "steps": counters.step,
            "nonfinite_steps_skipped": self.guard.skipped,
            "best_step": self.selector.best_step,
            "best_interpolation": self.selector.best_interpolation,
            "stopped_early": self.stopped_early,
            "eval_subset": {"size": len(self.eval_subset), "of": len(self.eval_set), "seed": config.seed,
                            "ids": [u.id for u in self.eval_subset.utterances]}
            if config.data.eval_limit else None,
            "baseline_subset": counters.baseline,
            "best_subset_wer": self.selector.best_wer,
            "train_samples_per_second": round(counters.samples / counters.train_seconds, 3)
            if counters.train_seconds else None,
            "first_step_seconds": round(self.first_step_seconds, 2) if self.first_step_seconds else None,
        }
        if self.prefix_cache is not None and self.shared_prefix.cache is not self.prefix_cache:
            self.prefix_cache.close()
        if not self.final_evaluation:
            return results
        # Final: the kept (lowest-WER) checkpoint on the whole eval set and every evidence set.
        processes.barrier()
        load_trainable(self.loaded.model, self.run.checkpoints / BEST)
        final = self._score(self.eval_set)
        provenance = {**run_provenance(config.model), "init_from": self.init_from}
        tuned_runs = {"eval": transcripts_of(final, self.eval_set, config.language),
                      **decode_sets(self.loaded, {k: v for k, v in self.eval_sets.items() if k != "eval"}, config,
                                    device=self.accelerator.device, processes=processes)}
        results = {
            **results,
            "final": final.summary(),
            "final_wer": final.scores.wer,
            "final_raw_wer": final.scores.raw_wer,
            "trainable_params": self.trainable,
            "total_params": self.base_total,
            "trainable_percent": 100.0 * self.trainable / self.base_total,
            "evaluation": evidence(self.eval_sets, tuned_runs, self.base_runs),
            "forgetting_budget": config.loop.forgetting_budget if config.data.general else None,
            "forgetting_measure": config.loop.forgetting_measure if config.data.general else None,
            "best_general_wer_rise": self.selector.best_forgetting,
            "best_within_budget": within_budget(self.selector.best_forgetting, config.loop.forgetting_budget),
            "train_seconds": round(time.perf_counter() - self.started, 2),
            "git_sha": provenance["asrtune"]["git_sha"],
            "provenance": provenance,
            "config_hash": config_hash(config),
            "data_digest": manifests_digest(config.data.manifests()),  # a sweep re-runs a cell whose data changed
            "config": config_to_dict(config),
        }
        if processes.is_main:
            write_predictions(final, self.run.predictions)
            write_set_predictions(self.run.evaluation, tuned_runs, self.base_runs)
            self.run.results.write_text(json.dumps(results, indent=2))
        processes.barrier()
        return results

    def _global_batch_size(self) -> int | str:
        loop, world = self.config.loop, self.processes.world
        if loop.max_batch_seconds is not None:
            return f"{loop.max_batch_seconds * world * loop.grad_accum_steps:g} s of audio"
        return loop.batch_size * world * loop.grad_accum_steps

    # --- helpers ----------------------------------------------------------------------------------------

    def say(self, message: str) -> None:
        """Print once (the main process), above any progress bar."""
        if self.processes.is_main:
            tqdm.write(message)

    def _on_main(self, work):
        """Run ``work`` on the main process; its result, or its AsrtuneError, reaches every process."""
        if self.processes.world == 1:
            return work()
        outcome = None
        if self.processes.is_main:
            try:
                outcome = ("ok", work())
            except AsrtuneError as error:
                outcome = ("error", str(error))
        outcome = self.processes.from_main(outcome)
        if outcome[0] == "error":
            raise AsrtuneError(outcome[1])
        return outcome[1]


def train(config: RunConfig, output_dir: str | Path, *, resume: bool = False, progress: bool = True,
          final_evaluation: bool = True, baseline_transcripts: dict[str, Transcripts] | None = None,
          shared_prefix: SharedPrefix | None = None) -> dict:
    """Fine-tune ``config.model`` with ``config.strategy``; returns what ``results.json`` holds.

    See :class:`Recipe` for the arguments.
    """
    return Recipe(config, output_dir, resume=resume, progress=progress, final_evaluation=final_evaluation,
                  baseline_transcripts=baseline_transcripts, shared_prefix=shared_prefix).train()
