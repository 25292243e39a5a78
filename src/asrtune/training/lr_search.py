"""Metric-driven learning-rate search (seed 003, Marco-ASR): choose the LR by validation WER, not loss.

Successive halving over a log-spaced range: every trial trains ``rung_steps`` steps and is scored by
WER on the eval set; the better half continues (resuming its own run folder) for twice as many
steps, and so on, until one trial is left or ``max_steps`` is reached. The rest are pruned. Trials run
one after another on one device; everything lives in run folders plus ``lr_search.json``, so an
interrupted search resumes where it stopped.

When no search is wanted, :func:`suggested_learning_rate` gives a documented default.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from asrtune.config import RunConfig
from asrtune.errors import AsrtuneError
from asrtune.strategies import default_learning_rate, parse_spec

__all__ = ["SearchSettings", "lr_grid", "run_lr_search", "suggested_learning_rate", "PRETRAINING_PEAK_LR"]

# Peak learning rates of Whisper's pre-training by d_model (Radford et al. 2022, "Robust Speech
# Recognition via Large-Scale Weak Supervision", appendix: training hyper-parameters).
PRETRAINING_PEAK_LR = {384: 1.5e-3, 512: 1.0e-3, 768: 5.0e-4, 1024: 2.5e-4, 1280: 1.75e-4}
# Fine-tuning at the pre-training peak divided by 40 is the heuristic the Whisper authors gave the
# Hugging Face Whisper fine-tuning event; for large-v2 it gives 4.4e-6, the paper's 1e-5 order.
FINE_TUNE_DIVISOR = 40


def suggested_learning_rate(d_model: int, spec: str) -> float:
    """A default LR from model size and strategy.

    Strategies that update pretrained weights (full, freeze, reinit, decoder) take Whisper's
    pre-training peak LR for that size divided by 40. Strategies that add fresh modules (lora,
    adapter) train them from zero and take their own published defaults (PEFT's 1e-3 for LoRA,
    seed 002's 3e-4 for adapters), which do not scale with model size.
    """
    last = parse_spec(spec)[-1]
    if last.kind == "add":
        return last.default_lr
    nearest = min(PRETRAINING_PEAK_LR, key=lambda width: abs(width - d_model))
    return PRETRAINING_PEAK_LR[nearest] / FINE_TUNE_DIVISOR


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """How the search runs.

    Attributes:
        min_lr, max_lr: the range (None: a decade either side of the strategy's default).
        trials: log-spaced learning rates tried.
        rung_steps: steps every trial trains before the first cut.
        max_steps: no trial trains longer than this.
        target: which LR is searched: ``learning_rate`` (all parameters), or ``encoder_learning_rate``
            (the encoder's group only, the decoder's fixed at ``learning_rate``).
    """

    min_lr: float | None = None
    max_lr: float | None = None
    trials: int = 4
    rung_steps: int = 10
    max_steps: int = 40
    target: str = "learning_rate"

    def __post_init__(self) -> None:
        if self.trials < 2:
            raise AsrtuneError("lr-search needs at least 2 trials")
        if self.rung_steps < 1 or self.max_steps < self.rung_steps:
            raise AsrtuneError("lr-search needs 1 <= rung_steps <= max_steps")
        if self.target not in ("learning_rate", "encoder_learning_rate"):
            raise AsrtuneError("lr-search target must be learning_rate or encoder_learning_rate")
        if self.min_lr is not None and self.max_lr is not None and not 0 < self.min_lr < self.max_lr:
            raise AsrtuneError("lr-search needs 0 < min_lr < max_lr")


def lr_grid(settings: SearchSettings, spec: str) -> list[float]:
    """``trials`` learning rates, log-spaced over the range, lowest first."""
    centre = default_learning_rate(spec)
    low = settings.min_lr or centre / 10
    high = settings.max_lr or centre * 10
    ratio = math.log(high / low)
    return [float(f"{low * math.exp(ratio * i / (settings.trials - 1)):.3g}") for i in range(settings.trials)]


def _trial_config(config: RunConfig, settings: SearchSettings, lr: float, steps: int) -> RunConfig:
    optim = dataclasses.replace(config.optim, **{settings.target: lr})
    loop = dataclasses.replace(config.loop, max_steps=steps, eval_every=settings.rung_steps, patience=None,
                               eval_at_start=False, schedule="constant", plateau_factor=None,
                               warmup_ratio=min(config.loop.warmup_ratio, 0.5 * settings.rung_steps / steps))
    return dataclasses.replace(config, optim=optim, loop=loop)


def _last_eval(run_dir: Path) -> dict | None:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evals = [r for r in records if "eval_wer" in r]
    losses = [r["loss"] for r in records if "loss" in r]
    if not evals:
        return None
    return {**evals[-1], "loss": losses[-1] if losses else None}


def _train_to(config: RunConfig, run_dir: Path, steps: int, progress: bool) -> dict:
    """Train (or resume) a trial's run folder up to ``steps``; returns its last evaluation."""
    from asrtune.training.recipe import train  # late: the recipe imports much

    last = _last_eval(run_dir)
    if last is None or last["step"] < steps:
        resume = (run_dir / "checkpoints" / "last" / "state.json").is_file()
        train(config, run_dir, resume=resume, progress=progress, final_evaluation=False)
        last = _last_eval(run_dir)
    return last


def run_lr_search(config: RunConfig, output_dir: Path, settings: SearchSettings = SearchSettings(),
                  progress: bool = True) -> dict:
    """Search, write ``output_dir/lr_search.json`` and a WER-vs-LR plot; returns the JSON's content."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    grid = lr_grid(settings, config.strategy)
    trials = {lr: {"lr": lr, "wer": None, "loss": None, "steps": 0, "pruned": False} for lr in grid}
    alive = list(grid)
    steps = settings.rung_steps
    while True:
        for lr in tqdm(alive, desc=f"lr-search rung {steps} steps", unit="trial", disable=not progress):
            run_dir = output_dir / "trials" / f"lr-{lr:.3g}"
            last = _train_to(_trial_config(config, settings, lr, steps), run_dir, steps, progress=False)
            trials[lr].update(wer=last["eval_wer"], loss=last["loss"], steps=last["step"])
            tqdm.write(f"lr {lr:.3g}: WER {last['eval_wer']:.4f} after {last['step']} steps")
            _write(output_dir, trials, settings, config, final=False)
        if len(alive) == 1 or steps * 2 > settings.max_steps:
            break
        ranked = sorted(alive, key=lambda lr: trials[lr]["wer"])
        keep = max(1, len(alive) // 2)
        for lr in ranked[keep:]:
            trials[lr]["pruned"] = True
        alive = ranked[:keep]
        steps *= 2
    return _write(output_dir, trials, settings, config, final=True)


def _write(output_dir: Path, trials: dict, settings: SearchSettings, config: RunConfig, *, final: bool) -> dict:
    scored = [t for t in trials.values() if t["wer"] is not None]
    best = min(scored, key=lambda t: t["wer"]) if scored else None
    result = {
        "best_lr": best["lr"] if best else None,
        "target": settings.target,
        "strategy": config.strategy,
        "model": config.model,
        "complete": final,
        "settings": dataclasses.asdict(settings),
        "trials": sorted(trials.values(), key=lambda t: t["lr"]),
    }
    (output_dir / "lr_search.json").write_text(json.dumps(result, indent=2))
    if final and scored:
        _plot(output_dir / "lr_search.png", result)
    return result


def _plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = [t for t in result["trials"] if t["wer"] is not None]
    figure, axis = plt.subplots(figsize=(6, 4))
    for pruned, marker, label in ((False, "o", "survived"), (True, "x", "pruned")):
        chosen = [t for t in trials if t["pruned"] == pruned]
        axis.scatter([t["lr"] for t in chosen], [t["wer"] for t in chosen], marker=marker, label=label)
        for t in chosen:
            axis.annotate(f"{t['steps']} st", (t["lr"], t["wer"]), fontsize=7, xytext=(3, 3),
                          textcoords="offset points")
    axis.axvline(result["best_lr"], color="grey", linestyle="--", linewidth=1, label=f"best {result['best_lr']:.3g}")
    axis.set_xscale("log")
    axis.set_xlabel(result["target"].replace("_", " "))
    axis.set_ylabel("validation WER")
    axis.set_title(f"lr-search: {result['strategy']}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
