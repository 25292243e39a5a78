"""The training recipe: one class on accelerate, read top to bottom.

:meth:`Recipe.setup` builds the model (strategy applied), the data, the evaluator and the optimizer;
:meth:`Recipe.train` runs the loop: :meth:`train_step` (``optim.name``, warm-up then decay, accumulation,
clipping, non-finite steps skipped), :meth:`evaluate` every ``loop.eval_every`` steps and at step 0,
checkpoints (exact resume) and :meth:`finalize`. The recipe trains; its components do the rest:
``RunEvaluator`` scores, ``Selection`` decides what is kept (lowest eval WER under the forgetting budget) and
when to stop, ``training.results`` assembles ``results.json``; memory: ``optimizers``, ``recompute``
(gradient checkpointing), ``sharding`` (FSDP); what it loads, applies, feeds and scores: ``RecipeParts``.

Several processes (torchrun): ``loop.batch_size`` is per process and the loss is normalised over the global
batch's target tokens, so N processes with batch B train as one with batch N x B; evaluation is split and
gathered; the main process decides, writes and prints, and whatever fails there reaches every process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from asrtune.config import RunConfig, absolute_model, config_to_dict, save_config
from asrtune.errors import AsrtuneError
from asrtune.evaluation.decode import Evaluation
from asrtune.evaluation.forgetting import Transcripts
from asrtune.inspection import count_parameters
from asrtune.models.family import CachePlan, CtcSettings
from asrtune.models.load import LoadedModel
from asrtune.models.quantize import check_quantization
from asrtune.models.new_language import apply_config_language
from asrtune.paths import write_dir_atomically
from asrtune.runs.layout import BEST, LAST, RunDir
from asrtune.runs.load import init_from_record
from asrtune.runs.weights import save_trainable
from asrtune.strategies import default_learning_rate
from asrtune.training.checkpoint import load_training_state, rng_state, save_training_state, set_rng_state
from asrtune.training.ctc import ctc_settings
from asrtune.training.data import TrainingData, training_data
from asrtune.training.distributed import Processes, check_launch
from asrtune.training.encoder_cache import PrefixCache
from asrtune.training.evaluator import RunEvaluator
from asrtune.training.evidence import pristine_copy
from asrtune.training.faults import NonFiniteGuard
from asrtune.training.feed import SharedPrefix, StepInputs, encoder_plan, prefix_cache
from asrtune.training.interpolation import START, save_start, score_interpolations
from asrtune.training.lr_control import parameter_groups, warmup_schedule
from asrtune.training.optimizers import build_optimizer, check_optimizer
from asrtune.training.parts import RecipeParts
from asrtune.training.precision import accelerator_mixed_precision, resolve_mixed_precision, step_autocast
from asrtune.training.recompute import enable_gradient_checkpointing
from asrtune.training.results import final_results, training_results
from asrtune.training.resume import apply_new_optim, check_run_dir
from asrtune.training.selection import Counters, Decision, Selection
from asrtune.training.sharding import Sharding

__all__ = ["Recipe", "RecipeParts", "SharedPrefix", "train"]


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
        parts: what the recipe loads, applies, feeds and scores with (default: the real parts).
    """

    def __init__(self, config: RunConfig, output_dir: str | Path, *, resume: bool = False,
                 progress: bool = True, final_evaluation: bool = True,
                 baseline_transcripts: dict[str, Transcripts] | None = None,
                 shared_prefix: SharedPrefix | None = None, parts: RecipeParts | None = None) -> None:
        self.config = dataclasses.replace(config, model=absolute_model(config.model, Path.cwd()))
        self.run = RunDir(Path(output_dir))
        self.resume, self.progress, self.final_evaluation = resume, progress, final_evaluation
        self.given_transcripts = baseline_transcripts
        self.shared_prefix = shared_prefix or SharedPrefix()
        self.parts = parts or RecipeParts()
        self.started = time.perf_counter()
        # built by setup()
        self.precision = "no"
        self.accelerator: Accelerator | None = None
        self.processes: Processes | None = None
        self.loaded: LoadedModel | None = None
        self.init_from: dict | None = None  # what results.json records of the run init_from names
        self.base_total = self.trainable = 0
        self.learning_rate = 0.0
        self.params: list[torch.nn.Parameter] = []
        self.data: TrainingData | None = None
        self.plan: CachePlan | None = None  # the frozen encoder prefix whose outputs are cached
        self.short_input = False  # steps run the encoder on each batch's cut window
        self.ctc: CtcSettings | None = None  # the CTC part of the loss (LLM families' alignment)
        self.evaluator: RunEvaluator | None = None
        self.selection: Selection | None = None
        self.guard: NonFiniteGuard | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.sharding: Sharding | None = None  # FSDP, or nothing
        self.scheduler = None
        self.forward: torch.nn.Module | None = None
        self.prefix_cache: PrefixCache | None = None
        self.inputs: StepInputs | None = None
        self.counters = Counters()
        self.writer: SummaryWriter | None = None
        self.stopped_early = False  # set by train(), as is the next one
        self.first_step_seconds: float | None = None

    # --- setup ------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Model, data, evaluator and optimizer; the run folder checked before anything trains."""
        config = self.config
        check_launch()
        self.precision = resolve_mixed_precision(config.loop.mixed_precision)
        # cpu=True where torch sees no accelerator: accelerate then forms a gloo group under torchrun
        # (without it, accelerate 1.16 gives every torchrun rank a world of its own)
        self.accelerator = Accelerator(mixed_precision=accelerator_mixed_precision(self.precision),
                                       cpu=torch.accelerator.current_accelerator() is None)
        self.processes = Processes(self.accelerator)
        check_optimizer(config.optim.name, self.accelerator.device.type)  # before any model loads
        check_quantization(config.quantization)
        self.sharding = Sharding(config.loop.parallel == "fsdp", self.accelerator.device.type,
                                 self.processes.world)
        if not self.processes.is_main:
            warnings.simplefilter("ignore")  # the main process reports; N copies of each warning help nobody
        self.processes.on_main(lambda: check_run_dir(self.run, config, self.resume))
        set_seed(config.seed)
        if config.loop.mixed_precision == "auto" and self.progress:
            arithmetic = "bf16 autocast" if self.precision == "bf16" else "fp32"
            self.say(f"loop.mixed_precision=auto: training in {arithmetic} on {self.accelerator.device.type} "
                     "(evaluation decodes in fp32)")
        pristine = self._setup_model()
        self.data = training_data(config, self.loaded, world=self.processes.world, rank=self.processes.rank,
                                  pin_memory=self.accelerator.device.type == "cuda",
                                  batch_sampler=self.parts.batch_sampler, augment=self.parts.augment,
                                  say=self.say)
        self.plan, self.short_input = encoder_plan(config, self.loaded, self.say)
        self.ctc = ctc_settings(config.loop, self.loaded, self.data.train_set, config.seed)
        self.evaluator = RunEvaluator(config, self.run, self.processes, score=self.parts.score,
                                      progress=self.progress, given_transcripts=self.given_transcripts)
        self.evaluator.setup(self.loaded, self.data.eval_set, pristine=pristine,
                             device=self.accelerator.device, final_evaluation=self.final_evaluation)
        del pristine
        self._setup_optimizer()
        self.counters = Counters()
        if self.resume:
            self.load_checkpoint()
        if self.processes.is_main:
            save_config(config, self.run.config)  # after a resume has loaded: a failed one changes nothing
        if self.processes.is_main:
            purge = self.counters.step + 1 if self.resume else None
            self.writer = SummaryWriter(str(self.run.tensorboard), purge_step=purge)

    def _setup_model(self) -> LoadedModel | None:
        """The start model with the run's language token and strategy; returns a copy of the model as it was
        before the strategy (for the base transcripts; None when they need no decoding here)."""
        config = self.config
        if not config.data.train or not config.data.eval:
            raise AsrtuneError("data.train and data.eval must name manifests")
        base = self.parts.load_start(config)  # config.model, or the kept weights of the run init_from names
        self.init_from = init_from_record(config.init_from) if config.init_from else None
        apply_config_language(base, config)  # language: new:xx,init=yy grows the vocabulary by one token
        _, self.base_total = count_parameters(base.model)
        pristine = pristine_copy(base, self.run.base_transcripts, self.given_transcripts)
        model = self.parts.apply_strategy(base.model, config.strategy)
        self.trainable, _ = count_parameters(model)
        if config.loop.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        self.loaded = LoadedModel(model=model, processor=base.processor, source=config.model,
                                  strategy=config.strategy)
        self.learning_rate = (config.optim.learning_rate
                              or default_learning_rate(config.strategy, base.family.name))
        if not any(p.requires_grad for p in model.parameters()):
            raise AsrtuneError(f"strategy {config.strategy!r} leaves nothing to train")
        return pristine

    def _setup_optimizer(self) -> None:
        config, accelerator = self.config, self.accelerator
        # FSDP shards the model in place before the optimizer sees its (sharded) parameters; DDP wraps it
        forward = self.sharding.shard(self.parts.forward(self.loaded.model, self.plan, self.ctc), self.plan)
        self.params = [p for p in self.loaded.model.parameters() if p.requires_grad]
        groups = parameter_groups(self.loaded.model, self.learning_rate, config.optim.encoder_learning_rate,
                                  config.optim.projector_learning_rate)
        optimizer = build_optimizer(config.optim, groups, self.learning_rate, accelerator.device.type)
        self.selection = Selection(config.loop, self.learning_rate, config.language)
        self.guard = NonFiniteGuard(config.loop.max_nonfinite_steps)
        warmup = int(config.loop.warmup_ratio * config.loop.max_steps)
        self.scheduler = warmup_schedule(optimizer, warmup, config.loop.max_steps, self.selection.plateau,
                                         decay=config.loop.schedule == "linear")
        if self.sharding.enabled:
            self.forward, self.optimizer = forward, accelerator.prepare(optimizer)
        else:
            self.forward, self.optimizer = accelerator.prepare(forward, optimizer)
        # Evaluation calls generate on the bare model: without accelerate's autocast wrapper it decodes in
        # fp32, like the base model it is compared with.
        self.loaded.model = accelerator.unwrap_model(self.forward, keep_fp32_wrapper=False).model
        if self.plan is not None:
            self.prefix_cache = prefix_cache(self.shared_prefix, config, self.loaded, self.plan,
                                             self.data.train_set, device=accelerator.device,
                                             precision=self.precision, rank=self.processes.rank,
                                             world=self.processes.world, spill_root=self.run.encoder_cache)
        self.inputs = StepInputs(self.loaded.model, self.plan, self.prefix_cache, self.short_input,
                                 self.parts.encode_prefix, accelerator.device)

    # --- the loop ---------------------------------------------------------------------------------------

    def train(self) -> dict:
        """Run setup, the loop and finalize; returns what ``results.json`` holds."""
        self.setup()
        config, counters = self.config, self.counters
        if counters.step == 0 and config.loop.interpolation:  # checkpoints/start: the weights to mix with
            self.processes.on_main(lambda: save_start(self.loaded.model, self.run.checkpoints / START))
        if counters.step == 0 and counters.baseline is None and config.loop.eval_at_start:
            self.evaluate(0)
            self.save_checkpoint()
        self.forward.train()
        bar = tqdm(total=config.loop.max_steps, initial=counters.step, desc="train", unit="step",
                   disable=not (self.progress and self.processes.is_main))
        batches = iter(self.data.loader)
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
        if config.loop.interpolation:  # start + a x (end - start) for each a, offered to selection
            self.forward.eval()
            score_interpolations(self.loaded.model, self.run.checkpoints / START, config.loop.interpolation,
                                 lambda weight: self.evaluate(self.counters.step, interpolation=weight))
        if self.writer:
            self.writer.close()
        return self.finalize()

    def train_step(self, micro_batches: list[dict]) -> tuple[float, bool]:
        """One optimizer step over ``grad_accum_steps`` micro-batches; returns (global mean loss, applied)."""
        config, accelerator, counters = self.config, self.accelerator, self.counters
        started = time.perf_counter()
        # Target tokens of the whole global step (every process, every micro-batch), from the sampler:
        # every process knows every global batch, so no communication is needed for the normaliser.
        numbers = [batch["draw"] for batch in micro_batches]
        batches, train_set = self.data.batches, self.data.train_set
        tokens = sum(train_set.target_tokens(i, n) for n in numbers for i in batches[n].tolist())
        local_sum = 0.0
        for position, batch in enumerate(micro_batches):
            last = position == len(micro_batches) - 1
            sync = nullcontext() if last or self.processes.world == 1 else accelerator.no_sync(self.forward)
            with sync, step_autocast(self.precision, accelerator):
                loss_sum, _ = self.forward(**self.inputs(batch))
                accelerator.backward(loss_sum * (self.processes.world / tokens))
            local_sum += loss_sum.item()
        loss = self.processes.sum(local_sum) / tokens
        grad_norm = None
        if self.precision != "fp16":  # fp16: the gradient scaler skips overflowing steps itself
            max_norm = config.optim.max_grad_norm if config.optim.max_grad_norm is not None else math.inf
            grad_norm = self.sharding.grad_norm(accelerator.clip_grad_norm_(self.params, max_norm))
        elif config.optim.max_grad_norm is not None:
            accelerator.clip_grad_norm_(self.params, config.optim.max_grad_norm)
        applied = self.guard.check(counters.step + 1, loss, grad_norm)
        if applied:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        counters.step += 1
        counters.samples += sum(len(batches[n]) for n in numbers)
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

    # --- evaluation -------------------------------------------------------------------------------------

    def evaluate(self, step: int, interpolation: float | None = None) -> bool:
        """Score the eval subset (and general sets); keep the checkpoint if it is the best. True: stop.

        ``interpolation``: the weights are a mix of step 0 and ``step`` (``training.interpolation``).
        """
        with self.sharding.full():  # FSDP: whole parameters while decoding (no collective per token)
            evaluation, general, extra = self.evaluator.step(self.loaded, self.data.eval_subset)
        decision, state = self.processes.on_main(
            lambda: self._decide(step, evaluation, general, interpolation, extra))
        if not self.processes.is_main:
            self.selection.take_shared_state(state, self.counters)
        if decision.improved:
            meta = {"step": step, "wer": evaluation.scores.wer, "strategy": self.config.strategy,
                    "general_wer_rise": decision.rises or None, "interpolation": interpolation}
            with self.sharding.full():
                self.processes.on_main(lambda: write_dir_atomically(
                    self.run.checkpoints / BEST,
                    lambda folder: save_trainable(self.loaded.model, folder, meta)))
        return decision.stop

    def _decide(self, step: int, evaluation: Evaluation, general: dict[str, Transcripts],
                interpolation: float | None, extra: dict) -> tuple[Decision, dict]:
        """The main process's decision on one evaluation, reported; and the state the others take on."""
        decision = self.selection.decide(step, evaluation, general, self.evaluator.base_runs, self.counters,
                                         interpolation, extra)
        for record in decision.records:
            self.run.append_metric(record)
        if self.writer and interpolation is None:
            self.writer.add_scalar("eval/wer", evaluation.scores.wer, step)
            self.writer.add_scalar("eval/cer", evaluation.scores.cer, step)
        for message in decision.messages:
            self.say(message)
        return decision, self.selection.shared_state(self.counters)

    # --- checkpoints ------------------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """``checkpoints/last``: trainable weights and everything a resume needs, written atomically."""
        per_process = self.processes.gather([{"rng": rng_state(), "loader": self.data.loader.state_dict()}])
        optimizer_state = self.sharding.optimizer_state(self.optimizer.optimizer)  # FSDP: consolidated

        def write() -> None:
            state = {"optimizer": optimizer_state, "scheduler": self.scheduler.state_dict(),
                     "processes": per_process, "world_size": self.processes.world,
                     "counters": dataclasses.asdict(self.counters), **self.selection.state_dict(),
                     "guard": self.guard.state_dict(), "optim": config_to_dict(self.config.optim)}

            def fill(folder: Path) -> None:
                save_trainable(self.loaded.model, folder, {"step": self.counters.step})
                save_training_state(folder, state)
                (folder / "state.json").write_text(json.dumps(  # the same, for people and scripts to read
                    {**state["counters"], **state["selector"], "nonfinite": state["guard"]}, indent=2))

            write_dir_atomically(self.run.checkpoints / LAST, fill)

        with self.sharding.full():
            self.processes.on_main(write)

    def load_checkpoint(self) -> None:
        """Restore ``checkpoints/last`` and make the run folder say only what that state has done."""
        folder = self.run.checkpoints / LAST
        self.sharding.load_trainable(self.loaded.model, folder)
        state = load_training_state(folder)
        if state["world_size"] != self.processes.world:
            raise AsrtuneError(f"--resume: the run was checkpointed with {state['world_size']} process(es), "
                               f"this launch has {self.processes.world}; resume with the same number")
        self.sharding.load_optimizer_state(self.optimizer.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        mine = state["processes"][self.processes.rank]
        self.data.loader.load_state_dict(mine["loader"])
        set_rng_state(mine["rng"])
        self.counters = Counters(**state["counters"])
        self.selection.load_state_dict(state)
        self.guard.load_state_dict(state["guard"])
        change = apply_new_optim(self.optimizer, self.scheduler, self.loaded.model, self.config,
                                 self.learning_rate, state["optim"], self.counters.step)
        if change and self.processes.is_main:
            self.say(change[0])
            self.run.append_metric(change[1])
        if self.processes.is_main:
            dropped = self.run.truncate_metrics(self.counters.step)
            dropped_text = f" ({dropped} metrics record(s) after it dropped: those steps run again)"
            self.say(f"resumed at step {self.counters.step}" + (dropped_text if dropped else ""))

    # --- the end ----------------------------------------------------------------------------------------

    def finalize(self) -> dict:
        """Score the kept checkpoint on every set, write predictions and ``results.json``."""
        config, processes = self.config, self.processes
        results = training_results(
            run_root=str(self.run.root), config=config, learning_rate=self.learning_rate,
            param_groups=self.optimizer.param_groups, selection=self.selection, plan=self.plan,
            cache_stats=self.prefix_cache.stats() if self.prefix_cache is not None else None,
            precision=self.precision, world=processes.world, num_workers=self.data.num_workers,
            counters=self.counters, nonfinite_skipped=self.guard.skipped, stopped_early=self.stopped_early,
            eval_set=self.data.eval_set, eval_subset=self.data.eval_subset,
            first_step_seconds=self.first_step_seconds)
        if self.prefix_cache is not None and self.shared_prefix.cache is not self.prefix_cache:
            self.prefix_cache.close()
        if not self.final_evaluation:
            return results
        # Final: the kept (lowest-WER) checkpoint on the whole eval set and every evidence set.
        processes.barrier()
        self.sharding.load_trainable(self.loaded.model, self.run.checkpoints / BEST)
        with self.sharding.full():
            final, tuned = self.evaluator.final(self.loaded, self.data.eval_set, self.accelerator.device)
        results = final_results(results, config=config, final=final, trainable=self.trainable,
                                total=self.base_total, evidence=self.evaluator.evidence(tuned),
                                selection=self.selection, train_seconds=time.perf_counter() - self.started,
                                init_from=self.init_from)

        def write() -> None:
            self.evaluator.write(final, tuned, self.run.predictions)
            self.run.results.write_text(json.dumps(results, indent=2))

        processes.on_main(write)
        return results

    # --- helpers ----------------------------------------------------------------------------------------

    def say(self, message: str) -> None:
        """Print once (the main process), above any progress bar."""
        if self.processes.is_main:
            tqdm.write(message)


def train(config: RunConfig, output_dir: str | Path, *, resume: bool = False, progress: bool = True,
          final_evaluation: bool = True, baseline_transcripts: dict[str, Transcripts] | None = None,
          shared_prefix: SharedPrefix | None = None, parts: RecipeParts | None = None) -> dict:
    """Fine-tune ``config.model`` with ``config.strategy``; returns what ``results.json`` holds.

    See :class:`Recipe` for the arguments.
    """
    return Recipe(config, output_dir, resume=resume, progress=progress, final_evaluation=final_evaluation,
                  baseline_transcripts=baseline_transcripts, shared_prefix=shared_prefix, parts=parts).train()
