"""The scale core, measured: memory and time to the first step by corpus size, and samples/s by process count.

``memory``: for each ``--sizes N``, a manifest of N utterances (rows over a pool of ``--pool`` distinct
generated tone files of 0.5-2.5 s, no ``duration`` field, so durations come from the audio headers;
the feature cache off, so nothing is read back from earlier runs), then ``asrtune train`` on bundled
tiny.en for ``--steps`` steps (no evaluation at step 0, a 4-utterance eval set). The whole process tree
(the trainer and its DataLoader workers) is sampled every 0.1 s for its summed PSS
(``/proc/PID/smaps_rollup``); time to the first step is the recipe's own ``first_step_seconds`` (from
the start of the run: model load, manifest read, labels, durations, the first batch and its step).

``processes``: the same training (the demo's medical sentences spoken by espeak-ng, ``--train-utts``),
the same global batch (``--global-batch``), once in one process (2 threads) and once under
``torchrun --nproc_per_node 2`` (1 thread each, batch / 2 per process); samples/s is the recipe's
``train_samples_per_second`` (loop time only).

    python benchmarks/scale.py memory [--sizes 1000 10000 50000] [--steps 3] [--json]
    python benchmarks/scale.py processes [--steps 12] [--global-batch 8] [--json]

Numbers only; nothing here asserts on seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "bundled:tiny.en"


def _tree(pid: int) -> list[int]:
    """``pid`` and every descendant (DataLoader workers, torchrun's ranks)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _pss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _run(command: list[str], env: dict) -> tuple[int, float, str]:
    """Run ``command``; returns (exit code, peak summed PSS of its process tree in MB, its output)."""
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        peak = 0.0
        while process.poll() is None:
            peak = max(peak, _pss_mb(_tree(process.pid)))
            time.sleep(0.1)
        log.seek(0)
        return process.returncode, peak, log.read()


def _tones(folder: Path, pool: int) -> list[str]:
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(pool):
        path = folder / f"tone{i}.wav"
        if not path.exists():
            seconds = 0.5 + 2.0 * rng.random()
            t = np.arange(int(seconds * 16000)) / 16000
            sf.write(str(path), (0.3 * np.sin(2 * np.pi * (120 + i % 400) * t)).astype(np.float32), 16000)
        paths.append(str(path))
    return paths


def _manifest(path: Path, audio: list[str], size: int) -> Path:
    from asrtune.demo import corpus_lines

    lines = corpus_lines("medical_en")
    with path.open("w", encoding="utf-8") as handle:
        for i in range(size):
            row = {"id": f"u{i}", "audio": audio[i % len(audio)], "text": lines[i % len(lines)]}
            handle.write(json.dumps(row) + "\n")
    return path


def _config(work: Path, train: Path, evaluation: Path, steps: int, batch: int, **extra) -> Path:
    import yaml

    config = {"model": MODEL, "strategy": "full", "seed": 0,
              "data": {"train": str(train), "eval": str(evaluation), "feature_cache": False},
              "optim": {"learning_rate": 1e-5},
              "loop": {"max_steps": steps, "batch_size": batch, "eval_every": 10_000, "eval_at_start": False,
                       "max_new_tokens": 32, **extra}}
    path = work / f"config-{train.stem}-{batch}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def memory(args: argparse.Namespace, work: Path) -> list[dict]:
    audio = _tones(work / "audio", args.pool)
    evaluation = _manifest(work / "eval.jsonl", audio, 4)
    rows = []
    for size in args.sizes:
        train = _manifest(work / f"train{size}.jsonl", audio, size)
        config = _config(work, train, evaluation, args.steps, 8)
        run_dir = work / f"run{size}"
        code, peak, output = _run([sys.executable, "-m", "asrtune", "train", str(config), "--output-dir",
                                   str(run_dir)], {**os.environ})
        if code:
            raise SystemExit(f"size {size}: asrtune train failed:\n{output[-2000:]}")
        results = _results(run_dir)
        rows.append({"utterances": size, "peak_pss_mb": round(peak), "first_step_seconds": results["first_step_seconds"],
                     "num_workers": results["num_workers"]})
        print(f"{size:>7} utterances: peak PSS {peak:,.0f} MB, first step after {results['first_step_seconds']} s "
              f"({results['num_workers']} workers)", flush=True)
    return rows


def processes(args: argparse.Namespace, work: Path) -> list[dict]:
    from asrtune.data.manifest import read_manifest, write_manifest
    from asrtune.data.synth import SynthSettings, synthesise_lines
    from asrtune.demo import demo_splits

    lines = demo_splits()["train"][: args.train_utts]
    train = synthesise_lines(lines, work / "speech", settings=SynthSettings(seed=0), prefix="train", language="en",
                             progress=False)
    evaluation = work / "eval.jsonl"
    write_manifest(read_manifest(train)[:4], evaluation)
    rows = []
    for world in (1, 2):
        batch = args.global_batch // world
        config = _config(work, train, evaluation, args.steps, batch, mixed_precision=args.mixed_precision,
                         num_workers=0)
        run_dir = work / f"world{world}"
        env = {**os.environ, "OMP_NUM_THREADS": str(2 // world)}
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world)] if world > 1
                    else [sys.executable])
        code, peak, output = _run([*launcher, "-m", "asrtune", "train", str(config), "--output-dir", str(run_dir)],
                                  env)
        if code:
            raise SystemExit(f"{world} process(es): asrtune train failed:\n{output[-2000:]}")
        results = _results(run_dir)
        rows.append({"processes": world, "batch_per_process": batch, "global_batch": results["global_batch_size"],
                     "samples_per_second": results["train_samples_per_second"], "peak_pss_mb": round(peak),
                     "mixed_precision": results["mixed_precision"]})
        print(f"{world} process(es) x batch {batch}: {results['train_samples_per_second']} samples/s, "
              f"peak PSS {peak:,.0f} MB ({results['mixed_precision']})", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    mem = sub.add_parser("memory")
    mem.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    mem.add_argument("--pool", type=int, default=1000)
    mem.add_argument("--steps", type=int, default=3)
    proc = sub.add_parser("processes")
    proc.add_argument("--steps", type=int, default=12)
    proc.add_argument("--global-batch", type=int, default=8)
    proc.add_argument("--train-utts", type=int, default=64)
    proc.add_argument("--mixed-precision", default="auto")
    for p in (mem, proc):
        p.add_argument("--work-dir", type=Path, default=None)
        p.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="asrtune-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = memory(args, work) if args.what == "memory" else processes(args, work)
    if args.json:
        print(json.dumps({"results": rows}))


if __name__ == "__main__":
    main()
