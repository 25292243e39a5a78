"""Metric-driven learning-rate search (seed 003, Marco-ASR): choose the LR by validation WER, not loss.

Successive halving over a log-spaced range: every trial trains ``rung_steps`` steps and is scored by
WER on the eval set; the better half continues (resuming its own run folder) for twice as many
steps, and so on, until one trial is left or ``max_steps`` is reached. The rest are pruned. Trials run
one after another on one device; everything lives in run folders plus ``lr_search.json``, so an
interrupted search resumes where it stopped.

Trials are only ever compared at equal steps: each rung ranks the WERs its trials scored at that
rung's step, and ``best_lr`` is the lowest WER at the last rung (a pruned trial's WER, scored after
fewer steps, never competes with a survivor's). Each trial records its WER at every rung it reached
and its rank among the trials scored at its last rung. When the best trial sits at an end of the
searched range the optimum may lie beyond it: the range is extended a decade that way and searched on
(``extend`` times; the incumbent competes again, at equal steps, from the first rung), and if the best
is still at an end the result carries a loud ``warning``.

When no search is wanted, :func:`suggested_learning_rate` gives a documented default.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from asrtune.config import RunConfig
from asrtune.errors import AsrtuneError
from asrtune.models.load import source_family
from asrtune.strategies import default_learning_rate, parse_spec
from asrtune.training.parts import RecipeParts
from asrtune.training.recipe import SharedPrefix, train

__all__ = ["SearchSettings", "lr_grid", "extension_grid", "run_lr_search", "suggested_learning_rate",
           "PRETRAINING_PEAK_LR"]

# Peak learning rates of Whisper's pre-training by d_model (Radford et al. 2022, "Robust Speech
# Recognition via Large-Scale Weak Supervision", appendix: training hyper-parameters).
PRETRAINING_PEAK_LR = {384: 1.5e-3, 512: 1.0e-3, 768: 5.0e-4, 1024: 2.5e-4, 1280: 1.75e-4}
# Fine-tuning at the pre-training peak divided by 40 is the heuristic the Whisper authors gave the
# Hugging Face Whisper fine-tuning event; for large-v2 it gives 4.4e-6, the paper's 1e-5 order.
FINE_TUNE_DIVISOR = 40
TARGETS = ("learning_rate", "encoder_learning_rate", "projector_learning_rate")  # which group an lr-search moves


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
        target: which LR is searched: ``learning_rate`` (all parameters; with the others set, the
            decoder's / LLM's group), ``encoder_learning_rate`` (the (audio) encoder's group only, the rest
            fixed at ``learning_rate``) or ``projector_learning_rate`` (LLM families' projector group).
        extend: how many times the range may be extended a decade past the end that holds the best
            trial (0: never; the result then warns when the best is at an end).
    """

    min_lr: float | None = None
    max_lr: float | None = None
    trials: int = 4
    rung_steps: int = 10
    max_steps: int = 40
    target: str = "learning_rate"
    extend: int = 1

    def __post_init__(self) -> None:
        if self.extend < 0:
            raise AsrtuneError("lr-search extend must be >= 0")
        if self.trials < 2:
            raise AsrtuneError("lr-search needs at least 2 trials")
        if self.rung_steps < 1 or self.max_steps < self.rung_steps:
            raise AsrtuneError("lr-search needs 1 <= rung_steps <= max_steps")
        if self.target not in TARGETS:
            raise AsrtuneError(f"lr-search target must be one of {', '.join(TARGETS)}")
        if self.min_lr is not None and self.max_lr is not None and not 0 < self.min_lr < self.max_lr:
            raise AsrtuneError("lr-search needs 0 < min_lr < max_lr")


def lr_grid(settings: SearchSettings, spec: str, family: str = "whisper") -> list[float]:
    """``trials`` learning rates, log-spaced over the range, lowest first."""
    centre = default_learning_rate(spec, family)
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


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _eval_at(run_dir: Path, steps: int) -> dict | None:
    """A trial's evaluation at exactly ``steps`` (the last record of that step), with the latest loss
    logged by then; None when it has none."""
    records = _records(run_dir)
    evals = [r for r in records if "eval_wer" in r and r.get("step") == steps]
    if not evals:
        return None
    losses = [r["loss"] for r in records if "loss" in r and r.get("step", 0) <= steps]
    return {**evals[-1], "loss": losses[-1] if losses else None}


def _train_to(config: RunConfig, run_dir: Path, steps: int, progress: bool, shared_prefix: SharedPrefix | None = None,
              parts: RecipeParts | None = None) -> dict:
    """Train (or resume) a trial's run folder up to ``steps``; returns its evaluation at ``steps``.

    A trial already trained that far is not trained again: its evaluation at that step is read back.
    ``shared_prefix``: the frozen-prefix cache trials hand on; ``parts``: the recipe's parts (default: real).
    """
    found = _eval_at(run_dir, steps)
    if found is not None:
        return found
    reached = max((r["step"] for r in _records(run_dir) if "step" in r), default=0)
    if reached > steps:
        raise AsrtuneError(f"{run_dir}: trained to step {reached} but never scored at step {steps}, where this "
                           "search compares trials; delete the folder to search again")
    resume = (run_dir / "checkpoints" / "last" / "state.json").is_file()
    train(config, run_dir, resume=resume, progress=progress, final_evaluation=False,
          shared_prefix=shared_prefix, parts=parts)
    found = _eval_at(run_dir, steps)
    if found is None:
        raise AsrtuneError(f"{run_dir}: training stopped without an evaluation at step {steps}")
    return found


def extension_grid(grid: list[float], direction: str) -> list[float]:
    """Learning rates one decade beyond an end of ``grid`` (``low`` or ``high``), as densely as the grid."""
    ordered = sorted(grid)
    ratio = (ordered[-1] / ordered[0]) ** (1 / (len(ordered) - 1)) if len(ordered) > 1 else 10.0
    per_decade = max(1, round(math.log(10) / math.log(ratio))) if ratio > 1 else 1
    edge, sign = (ordered[-1], 1) if direction == "high" else (ordered[0], -1)
    return sorted(float(f"{edge * 10 ** (sign * k / per_decade):.3g}") for k in range(1, per_decade + 1))


def _trial(lr: float) -> dict:
    return {"lr": lr, "wer": None, "loss": None, "steps": 0, "pruned": False, "rungs": {}}


def _bracket(trials: dict, alive: list[float], settings: SearchSettings, config: RunConfig, output_dir: Path,
             train_trial, progress: bool) -> tuple[list[float], int]:
    """Successive halving over ``alive``; returns the last rung's trials and its steps.

    A trial that already reached a rung (the incumbent of an extended range) is read back, not retrained.
    """
    steps = settings.rung_steps
    while True:
        for lr in tqdm(alive, desc=f"lr-search rung {steps} steps", unit="trial", disable=not progress):
            last = train_trial(_trial_config(config, settings, lr, steps), output_dir / "trials" / f"lr-{lr:.3g}",
                               steps)
            trial = trials[lr]
            trial["rungs"][str(steps)] = last["eval_wer"]
            trial["pruned"] = False
            if steps >= trial["steps"]:
                trial.update(wer=last["eval_wer"], loss=last["loss"], steps=steps)
            tqdm.write(f"lr {lr:.3g}: WER {last['eval_wer']:.4f} after {steps} steps")
            _write(output_dir, trials, settings, config, final=False)
        if len(alive) == 1 or steps * 2 > settings.max_steps:
            return alive, steps
        ranked = sorted(alive, key=lambda lr: trials[lr]["rungs"][str(steps)])  # equal steps: a fair race
        keep = max(1, len(alive) // 2)
        for lr in ranked[keep:]:
            trials[lr]["pruned"] = True
        alive = ranked[:keep]
        steps *= 2


def _ranks(trials: dict) -> None:
    """Each trial's rank among the trials scored at its last rung (same steps), 1 = lowest WER."""
    for trial in trials.values():
        if not trial["rungs"]:
            continue
        rung = str(trial["steps"])
        rivals = sorted(t["rungs"][rung] for t in trials.values() if rung in t["rungs"])
        trial["rank_at_last_rung"] = rivals.index(trial["rungs"][rung]) + 1
        trial["compared_with"] = len(rivals)


def run_lr_search(config: RunConfig, output_dir: Path, settings: SearchSettings = SearchSettings(),
                  progress: bool = True, parts: RecipeParts | None = None) -> dict:
    """Search, write ``output_dir/lr_search.json`` and a WER-vs-LR plot; returns the JSON's content.

    The JSON holds ``best_lr`` and ``best_steps`` (the rung it won at, against every trial scored
    there), ``edge`` (``low``/``high`` when the best is at an end of the searched range),
    ``extensions`` (decades added past an end), ``warning`` (set when the best is still at an end)
    and every trial's lr, WER and loss at its last rung, WER per rung, rank there and pruned flag.
    ``parts``: the recipe's parts every trial trains with (default: the real ones).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    shared_prefix = SharedPrefix()  # every trial's frozen encoder prefix is the same: encode it once
    train_trial = functools.partial(_train_to, progress=False, shared_prefix=shared_prefix, parts=parts)
    family = source_family(config.model)
    grid = lr_grid(settings, config.strategy, family)
    trials = {lr: _trial(lr) for lr in grid}
    survivors, steps = _bracket(trials, list(grid), settings, config, output_dir, train_trial, progress)
    extensions: list[dict] = []
    while True:
        best = min(survivors, key=lambda lr: trials[lr]["rungs"][str(steps)])
        edge = "low" if best == min(trials) else "high" if best == max(trials) else None
        if edge is None or len(extensions) >= settings.extend:
            break
        added = [lr for lr in extension_grid(list(trials), edge) if lr not in trials]
        if not added:
            break
        tqdm.write(f"lr-search: the best {settings.target} {best:.3g} is the {'lowest' if edge == 'low' else 'highest'}"
                   f" tried; searching a decade {'lower' if edge == 'low' else 'higher'}: "
                   + ", ".join(f"{lr:.3g}" for lr in added))
        extensions.append({"direction": edge, "from": best, "lrs": added})
        trials.update({lr: _trial(lr) for lr in added})
        survivors, steps = _bracket(trials, added + [best], settings, config, output_dir, train_trial, progress)
    warning = None
    if edge is not None:
        warning = (f"the best {settings.target} {best:.3g} is the {'lowest' if edge == 'low' else 'highest'} "
                   f"tried (range {min(trials):.3g} to {max(trials):.3g}"
                   + (f", extended {len(extensions)} decade(s)" if extensions else "")
                   + f"): the optimum may lie {'below' if edge == 'low' else 'above'} it; search further with "
                   f"--{'min' if edge == 'low' else 'max'}-lr or --extend")
        tqdm.write(f"lr-search WARNING: {warning}")
    outcome = {"best_lr": best, "best_steps": steps, "edge": edge, "extensions": extensions, "warning": warning,
               "selection": f"lowest validation WER at step {steps} among the "
                            f"{sum(str(steps) in t['rungs'] for t in trials.values())} trials scored there"}
    return _write(output_dir, trials, settings, config, final=True, outcome=outcome)


def _write(output_dir: Path, trials: dict, settings: SearchSettings, config: RunConfig, *, final: bool,
           outcome: dict | None = None) -> dict:
    _ranks(trials)
    result = {
        "best_lr": None,
        "best_steps": None,
        **(outcome or {}),
        "target": settings.target,
        "strategy": config.strategy,
        "model": config.model,
        "complete": final,
        "range": [min(trials), max(trials)],
        "settings": dataclasses.asdict(settings),
        "trials": sorted(trials.values(), key=lambda t: t["lr"]),
    }
    (output_dir / "lr_search.json").write_text(json.dumps(result, indent=2))
    if final and result["best_lr"] is not None:
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
    axis.axvline(result["best_lr"], color="grey", linestyle="--", linewidth=1,
                 label=f"best {result['best_lr']:.3g} (at {result['best_steps']} steps)")
    axis.set_xscale("log")
    axis.set_xlabel(result["target"].replace("_", " "))
    axis.set_ylabel("validation WER (at each trial's last rung)")
    title = f"lr-search: {result['strategy']}"
    if result.get("warning"):
        title += f" (best at the {result['edge']} end)"
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
