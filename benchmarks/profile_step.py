"""Where a training step's time goes: asrtune's recipe and the plain ``Seq2SeqTrainer``, under torch.profiler.

Both sides train bundled tiny.en on the demo's first ``--utterances`` training sentences, batch 8, the same
strategy and arithmetic (fp32 unless ``--mixed-precision bf16``), data loading on the main process on both
sides (``loop.num_workers: 0``, the Trainer's ``dataloader_num_workers=0``). After ``--warmup`` steps
(asrtune's frozen-prefix cache fills during them) the next ``--steps`` are profiled; each side prints its
seconds a step and its operators ranked by self CPU time, so a line present on one side and not on the
other, or much larger there, is where the difference lies.

    python benchmarks/profile_step.py --strategy full [--steps 3] [--warmup 9] [--rows 15]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train_speed import MODEL, _data


def _profiler():
    from torch.profiler import ProfilerActivity, profile, schedule

    return profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=0, warmup=0, active=10**6))


def _report(name: str, prof, seconds: list[float], rows: int) -> None:
    print(f"== {name}: {sum(seconds) / len(seconds):.2f} s a step over {len(seconds)} profiled steps")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48))


def run_asrtune(args: argparse.Namespace, train: Path, evaluation: Path) -> None:
    from asrtune.config import DataConfig, LoopConfig, OptimConfig, RunConfig
    from asrtune.training.recipe import Recipe

    total = args.warmup + args.steps
    loop = LoopConfig(max_steps=total, batch_size=8, eval_every=total + 1, eval_at_start=False, num_workers=0,
                      mixed_precision=args.mixed_precision)
    data = DataConfig(train=str(train), eval=str(evaluation))
    config = RunConfig(model=MODEL, strategy=args.strategy, data=data, optim=OptimConfig(learning_rate=1e-5),
                       loop=loop)
    prof, seconds = _profiler(), []

    class Profiled(Recipe):
        def train_step(self, micro_batches):
            if self.counters.step == args.warmup:
                prof.start()
            started = time.perf_counter()
            result = super().train_step(micro_batches)
            if self.counters.step > args.warmup:
                seconds.append(time.perf_counter() - started)
                prof.step()
            return result

    with tempfile.TemporaryDirectory(prefix="profile-step-") as work:  # the run's checkpoints go with it
        Profiled(config, Path(work) / "run", progress=False, final_evaluation=False).train()
    prof.stop()
    _report(f"asrtune {args.strategy}", prof, seconds, args.rows)


def run_trainer(args: argparse.Namespace, train: Path) -> None:
    import torch
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    from asrtune.data.features import FeatureDataset, collate
    from asrtune.data.manifest import read_manifest
    from asrtune.runs.load import load_model
    from asrtune.strategies import apply_strategy

    loaded = load_model(MODEL)
    model = apply_strategy(loaded.model, args.strategy)
    dataset = FeatureDataset(read_manifest(train), loaded.processor, multilingual=False, progress=False)
    prof, seconds, clock = _profiler(), [], {}

    class Profile(TrainerCallback):
        def on_step_begin(self, arguments, state, control, **kwargs):
            if state.global_step == args.warmup:
                prof.start()
            clock["start"] = time.perf_counter()

        def on_step_end(self, arguments, state, control, **kwargs):
            if state.global_step > args.warmup:
                seconds.append(time.perf_counter() - clock["start"])
                prof.step()

    def collator(items):
        batch = collate(items)
        return {"input_features": batch["input_features"], "labels": batch["labels"]}

    work = tempfile.TemporaryDirectory(prefix="profile-step-")  # save_strategy "no": nothing big lands there
    arguments = Seq2SeqTrainingArguments(
        output_dir=work.name, per_device_train_batch_size=8, max_steps=args.warmup + args.steps,
        learning_rate=1e-5, warmup_steps=0.1, optim="adamw_torch_fused", max_grad_norm=1.0,
        bf16=args.mixed_precision == "bf16", save_strategy="no", eval_strategy="no", logging_strategy="no",
        report_to=[], dataloader_num_workers=0, remove_unused_columns=False, seed=0, disable_tqdm=True,
        use_cpu=not torch.cuda.is_available())
    Seq2SeqTrainer(model=model, args=arguments, train_dataset=dataset, data_collator=collator,
                   callbacks=[Profile()]).train()
    prof.stop()
    _report(f"Seq2SeqTrainer {args.strategy}", prof, seconds, args.rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=9)
    parser.add_argument("--utterances", type=int, default=64)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-profile"))
    parser.add_argument("--side", choices=["asrtune", "trainer"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    train, evaluation = _data(args.work_dir, args.utterances)
    if args.side == "asrtune":
        run_asrtune(args, train, evaluation)
    elif args.side == "trainer":
        run_trainer(args, train)
    else:  # each side in a process of its own, one after the other
        for side in ("trainer", "asrtune"):
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--side", side], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
