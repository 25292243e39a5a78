"""Peak training memory measured against ``asrtune plan``'s prediction, and what gradient checkpointing saves.

Each row trains a real run (``asrtune.train``: the demo's medical sentences spoken by espeak-ng, fp32,
``loop.num_workers: 0``, ``--steps`` optimizer steps, no evaluation) in a process of its own, while this
process samples the proportional set size (PSS, ``/proc/PID/smaps_rollup`` via psutil) of that process and
its children every 20 ms; the row's peak is the largest sum. Beside it: ``asrtune plan``'s predicted peak
for the same model, strategy, batch, checkpointing and the data's longest label, and the per-step losses,
so rows that differ only by checkpointing show that it changes memory, not the training.

    python benchmarks/memory.py [--models bundled:tiny.en bundled:base]
        [--strategies full freeze:n=3 lora decoder] [--batch-sizes 4 8] [--steps 2] [--extra] [--json]

``--extra`` adds the rows the issue names: tiny.en ``lora:r=8`` and ``bundled:llm-asr-tiny``
``projector+lora:r=8,alpha=32``, batch 8, checkpointing off and on. On a GPU the measure is
``torch.cuda.max_memory_allocated`` instead. ``--replan FILE...`` reads the ``--json`` lines of earlier
runs and predicts their measured rows again with the current ``asrtune plan`` (how the plan's constants are
calibrated without training again; this project's rows are in ``benchmarks/data/memory/``), and with ``--fit``
fits the constants and reports how well constants fitted without a model's rows predict that model (leave one
model out). ``--baseline`` measures the training process's own memory (imports only), the one constant that
is measured rather than fitted. Numbers only; nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

MODELS = ["bundled:tiny.en", "bundled:base"]
STRATEGIES = ["full", "freeze:n=3", "lora", "decoder"]
EXTRA = [("bundled:tiny.en", "lora:r=8"), ("bundled:llm-asr-tiny", "projector+lora:r=8,alpha=32")]


def _data(work: Path, utterances: int) -> tuple[Path, Path]:
    from asrtune.data.manifest import read_manifest, write_manifest
    from asrtune.data.synth import SynthSettings, synthesise_lines
    from asrtune.demo import demo_splits

    train = synthesise_lines(demo_splits()["train"][:utterances], work / "train",
                             settings=SynthSettings(seed=0), prefix="train", language="en", progress=False)
    evaluation = work / "eval.jsonl"
    write_manifest(read_manifest(train)[:2], evaluation)
    return train, evaluation


def _child(args: argparse.Namespace) -> int:
    """Train one row; print its per-step losses and (on CUDA) the allocator's peak."""
    import tempfile

    import torch

    from asrtune.cli import quiet_libraries
    from asrtune.config import DataConfig, LoopConfig, OptimConfig, RunConfig
    from asrtune.training.recipe import train

    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as work:  # the run's checkpoints go with it
        out = Path(work) / "run"
        config = RunConfig(model=args.model, strategy=args.strategy, seed=0,
                           data=DataConfig(train=args.train, eval=args.eval),
                           optim=OptimConfig(learning_rate=1e-5),
                           loop=LoopConfig(max_steps=args.steps, batch_size=args.batch_size,
                                           eval_every=args.steps + 1, eval_at_start=False, mixed_precision="no",
                                           num_workers=0, log_every=1,
                                           gradient_checkpointing=args.checkpointing))
        train(config, out, progress=False, final_evaluation=False)
        losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
                  if '"loss"' in line]
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        print(json.dumps({"losses": losses, "cuda_peak": peak}))
    return 0


def _tree_pss(process) -> int:
    import psutil

    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measure(command: list[str]) -> tuple[dict, int]:
    """Run ``command``; its last JSON line and the peak PSS of its process tree (bytes)."""
    import psutil

    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(child.pid)
    peak = [0]

    def sample() -> None:
        while child.poll() is None:
            try:
                peak[0] = max(peak[0], _tree_pss(watched))
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1]), peak[0]


def longest_label(model: str, train: Path) -> int:
    """Tokens of the longest training sequence's target (what the decoder / LLM sees beyond its prompt)."""
    from asrtune.data.manifest import read_manifest
    from asrtune.runs.load import load_model

    loaded = load_model(model)
    texts = [u.text for u in read_manifest(train)]
    tokenizer = loaded.processor.tokenizer
    return max(len(tokenizer(" " + t, add_special_tokens=False)["input_ids"]) for t in texts) + 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--strategies", nargs="*", default=STRATEGIES)
    parser.add_argument("--batch-sizes", nargs="*", type=int, default=[4, 8])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--utterances", type=int, default=16)
    parser.add_argument("--extra", action="store_true", help="also the issue's extra checkpointing rows")
    parser.add_argument("--only-extra", action="store_true")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-memory"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--baseline", action="store_true",
                        help="measure the training process's own memory: a child that imports asrtune's training "
                             "code and loads nothing")
    parser.add_argument("--replan", type=Path, nargs="+", help="re-predict the rows of earlier --json runs")
    parser.add_argument("--fit", action="store_true", help="with --replan: the plan's constants that fit the "
                                                           "measured CPU rows best, and their leave-one-model-out "
                                                           "error")
    for name in ("model", "strategy", "train", "eval"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    if args.baseline:
        code = "import json; import asrtune.training.recipe; print(json.dumps({}))"
        _, pss = measure([sys.executable, "-c", code])
        print(f"the training process's own memory (imports, no model): {pss / 2**30:.2f} GiB PSS")
        return 0

    from asrtune.cli import quiet_libraries

    quiet_libraries()
    if args.replan:
        rows = [dict(row, **_predicted(row)) for path in args.replan for row in _saved_rows(path)]
        if args.fit:
            _fit(rows)
        return _report(rows, args.json)
    train, evaluation = _data(args.work_dir, args.utterances)
    grid = [] if args.only_extra else [(m, s, b) for m in args.models for s in args.strategies
                                       for b in args.batch_sizes]
    if args.extra or args.only_extra:
        grid += [(m, s, 8) for m, s in EXTRA]
    labels: dict[str, int] = {}
    rows = []
    for model, strategy, batch in grid:
        if model not in labels:
            labels[model] = longest_label(model, train)
        for checkpointing in (False, True):
            command = [sys.executable, __file__, "--child", "--model", model, "--strategy", strategy,
                       "--batch-size", str(batch), "--steps", str(args.steps), "--train", str(train),
                       "--eval", str(evaluation), *(["--checkpointing"] if checkpointing else [])]
            result, pss = measure(command)
            row = {"model": model, "strategy": strategy, "batch_size": batch, "checkpointing": checkpointing,
                   "label_tokens": labels[model], "device": "cuda" if result["cuda_peak"] else "cpu",
                   "measured_bytes": result["cuda_peak"] or pss, "losses": result["losses"]}
            row.update(_predicted(row))
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "plan"}), file=sys.stderr, flush=True)
    return _report(rows, args.json)


AUDIO_SECONDS = 6.0  # the longest of the benchmark's spoken sentences, for an LLM's audio tokens


def _predicted(row: dict) -> dict:
    from asrtune.training.plan import plan_memory

    plan = plan_memory(row["model"], row["strategy"], batch_size=row["batch_size"],
                       label_tokens=row.get("label_tokens") or row["plan"]["label_tokens"],
                       audio_seconds=AUDIO_SECONDS,
                       gradient_checkpointing=row["checkpointing"], device=row.get("device", "cpu"))
    return {"predicted_bytes": plan.peak_memory_bytes,
            "error": plan.peak_memory_bytes / row["measured_bytes"] - 1,
            "trainable_params": plan.trainable_params, "plan": plan.as_dict()}


def _terms(rows: list[dict]):
    """Per CPU row: the plan's fixed bytes (gradients, optimizer, logits), its kept activations and backward
    workspace before scaling, its weights, and the measured peak."""
    import numpy as np

    from asrtune.training import plan as planning

    fixed = np.array([sum(r["plan"][k] for k in ("gradients_bytes", "optimizer_bytes", "logits_bytes"))
                      for r in rows], dtype=float)
    kept = np.array([r["plan"]["activations_kept_bytes"] / planning.ACTIVATION_SCALE for r in rows])
    workspace = np.array([r["plan"]["activations_workspace_bytes"] / (planning.ACTIVATION_SCALE
                                                                      * planning.BACKWARD_BLOCKS) for r in rows])
    weights = np.array([r["plan"]["weights_bytes"] for r in rows], dtype=float)
    measured = np.array([r["measured_bytes"] for r in rows], dtype=float)
    return fixed, kept, workspace, weights, measured


def _constants(rows: list[dict]):
    """Least squares of measured - process = fixed + scale x (kept + blocks x workspace) + copies x weights,
    relative errors weighted alike, with the process's own bytes as measured (``--baseline``, in
    ``PROCESS_BYTES['cpu']``): (activation scale, backward blocks, weight copies, process bytes)."""
    import numpy as np

    from asrtune.training import plan as planning

    process = planning.PROCESS_BYTES["cpu"]
    fixed, kept, workspace, weights, measured = _terms(rows)
    scale = 1 / measured
    design = np.stack([kept, workspace, weights], axis=1) * scale[:, None]
    (activation_scale, workspace_scale, copies), *_ = np.linalg.lstsq(design, (measured - fixed - process) * scale,
                                                                      rcond=None)
    return activation_scale, workspace_scale / activation_scale, copies, process


def _predict(rows: list[dict], constants):
    activation_scale, blocks, copies, process = constants
    fixed, kept, workspace, weights, _ = _terms(rows)
    return fixed + activation_scale * (kept + blocks * workspace) + copies * weights + process


def _fit(rows: list[dict]) -> None:
    """The constants ``asrtune.training.plan`` calibrates (``ACTIVATION_SCALE``, ``BACKWARD_BLOCKS``,
    ``WEIGHT_COPIES['cpu']``, ``PROCESS_BYTES['cpu']``) fitted over every CPU row, and how well constants fitted
    without a model's rows predict that model's rows (leave one model out: the out-of-sample error)."""
    cpu = [r for r in rows if r.get("device", "cpu") == "cpu"]
    constants = _constants(cpu)

    def text(values) -> str:
        scale, blocks, copies, process = values
        return (f"ACTIVATION_SCALE = {scale:.2f}, BACKWARD_BLOCKS = {blocks:.2f}, WEIGHT_COPIES['cpu'] = "
                f"{copies:.2f}, PROCESS_BYTES['cpu'] = {process / 2**30:.2f} GiB")

    in_sample = [abs(p / r["measured_bytes"] - 1) for p, r in zip(_predict(cpu, constants), cpu, strict=True)]
    print(f"fit over {len(cpu)} CPU rows: {text(constants)}; in-sample median absolute error "
          f"{statistics.median(in_sample):.1%}")
    models = sorted({r["model"] for r in cpu})
    if len(models) < 2:
        return
    errors = []
    for model in models:
        held_out = [r for r in cpu if r["model"] == model]
        fitted = _constants([r for r in cpu if r["model"] != model])
        model_errors = [abs(p / r["measured_bytes"] - 1)
                        for p, r in zip(_predict(held_out, fitted), held_out, strict=True)]
        errors += model_errors
        print(f"  {model}: {len(held_out)} rows predicted with constants fitted on the other models' rows "
              f"({text(fitted)}): median absolute error {statistics.median(model_errors):.1%}, largest "
              f"{max(model_errors):.1%}")
    print(f"leave one model out: median absolute error {statistics.median(errors):.1%} over {len(errors)} rows")


def _saved_rows(path: Path) -> list[dict]:
    for line in reversed(path.read_text().splitlines()):
        if line.startswith('{"rows"'):
            return json.loads(line)["rows"]
    raise SystemExit(f"{path}: no --json line with rows")


def _report(rows: list[dict], as_json: bool) -> int:
    from asrtune.report import print_table

    table = []
    for row in rows:
        pair = next((r for r in rows if r is not row and r["checkpointing"] != row["checkpointing"]
                     and (r["model"], r["strategy"], r["batch_size"]) == (row["model"], row["strategy"],
                                                                          row["batch_size"])), None)
        saving = losses_equal = ""
        if row["checkpointing"] and pair:
            saving = f"{1 - row['measured_bytes'] / pair['measured_bytes']:+.0%}".replace("+", "-", 1) \
                if row["measured_bytes"] < pair["measured_bytes"] else \
                f"+{row['measured_bytes'] / pair['measured_bytes'] - 1:.0%}"
            worst = max(abs(a - b) / abs(b) for a, b in zip(row["losses"], pair["losses"], strict=True))
            losses_equal = f"max rel. diff {worst:.1e}"
        table.append([row["model"].removeprefix("bundled:"), row["strategy"], row["batch_size"],
                      "on" if row["checkpointing"] else "off", f"{row['measured_bytes'] / 2**20:,.0f}",
                      f"{row['predicted_bytes'] / 2**20:,.0f}", f"{row['error']:+.1%}", saving, losses_equal])
    print_table(["model", "strategy", "batch", "checkpointing", "measured peak MiB", "predicted MiB", "error",
                 "checkpointing saves", "losses vs off"], table)
    errors = [abs(r["error"]) for r in rows]
    print(f"median absolute error {statistics.median(errors):.1%} over {len(rows)} rows; "
          f"largest {max(errors):.1%}")
    if as_json:
        print(json.dumps({"rows": rows, "median_abs_error": statistics.median(errors)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
