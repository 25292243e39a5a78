"""PNG figures shaped like seed 002's: CKA per encoder layer (Fig. 1), WER against the number of
frozen layers (Fig. 2) and against the number of top encoder layers with adapters (Fig. 6), and
WER per strategy per language. matplotlib with the Agg backend: no display needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = ["plot_cka", "plot_wer_bars", "plot_param_curve", "plot_training_curves"]

_DPI = 120


def _save(figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)
    return path


def plot_cka(
    curves: Mapping[str, Mapping[int, float]], path: Path, *, title: str = "", side: str = "encoder"
) -> Path:
    """One line per label (a language, or a strategy): CKA of each layer before vs after fine-tuning.

    Args:
        curves: label -> {layer index (0 = lowest): CKA}.
        path: the PNG to write.
    """
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for label, values in curves.items():
        layers = sorted(values)
        axes.plot(layers, [values[i] for i in layers], marker="o", label=label)
    axes.set_xlabel(f"{side} layer (0 = lowest)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("linear CKA, base vs tuned")
    lowest = min((v for values in curves.values() for v in values.values()), default=0.0)
    axes.set_ylim(min(0.9, lowest - 0.05), 1.01)
    axes.grid(alpha=0.3)
    axes.set_title(title or f"{side} similarity before / after fine-tuning")
    if curves:
        axes.legend(fontsize="small")
    return _save(figure, path)


def plot_wer_bars(wers: Mapping[str, Mapping[str, float]], path: Path, *, title: str = "") -> Path:
    """Grouped bars: one group per dataset, one bar per strategy (``PT`` first for the base model).

    Args:
        wers: dataset -> {strategy label: WER (fraction)}; plotted in percent.
    """
    datasets = list(wers)
    strategies: list[str] = []
    for values in wers.values():
        strategies += [s for s in values if s not in strategies]
    width = 0.8 / max(1, len(strategies))
    figure, axes = plt.subplots(figsize=(max(6.4, 1.2 * len(datasets) * max(1, len(strategies)) * 0.5), 4.0))
    for k, strategy in enumerate(strategies):
        xs = [i + (k - (len(strategies) - 1) / 2) * width for i in range(len(datasets))]
        ys = [100 * wers[d].get(strategy, float("nan")) for d in datasets]
        axes.bar(xs, ys, width=width, label=strategy)
    axes.set_xticks(range(len(datasets)), datasets)
    axes.set_ylabel("WER (%)")
    axes.grid(axis="y", alpha=0.3)
    axes.set_title(title or "WER per strategy")
    # Below the axes: bars may reach any height, and a legend inside would hide some.
    axes.legend(
        fontsize="small",
        ncols=min(4, max(1, len(strategies))),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
    )
    return _save(figure, path)


def plot_param_curve(
    points: Mapping[str, Mapping[int, float]],
    path: Path,
    *,
    xlabel: str,
    title: str = "",
    reference: Mapping[str, float] | None = None,
    reference_label: str = "full",
) -> Path:
    """WER against an integer setting (frozen layers N, adapter top-P), one line per dataset.

    Args:
        points: dataset -> {setting: WER (fraction)}; plotted in percent.
        reference: dataset -> WER of a reference strategy, drawn as a dashed line (e.g. ``full``).
    """
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for dataset, values in points.items():
        xs = sorted(values)
        line = axes.plot(xs, [100 * values[x] for x in xs], marker="o", label=dataset)[0]
        if reference and dataset in reference:
            axes.axhline(
                100 * reference[dataset],
                color=line.get_color(),
                linestyle="--",
                linewidth=1,
                label=f"{dataset} {reference_label}",
            )
    axes.set_xlabel(xlabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("WER (%)")
    axes.grid(alpha=0.3)
    axes.set_title(title)
    if points:
        axes.legend(fontsize="small")
    return _save(figure, path)


def plot_training_curves(runs: Mapping[str, Sequence[dict]], path: Path, *, title: str = "") -> Path:
    """Eval WER (and the CTC WER beside it, where recorded) against the step, one colour per run, the runs
    laid end to end (a stage that starts from another continues its steps); training loss on a second axis.

    Args:
        runs: label -> the run's ``metrics.jsonl`` records, in order.
    """
    figure, axes = plt.subplots(figsize=(7.2, 4.0))
    losses = axes.twinx()
    offset = 0
    for label, records in runs.items():
        evals = [r for r in records if "eval_wer" in r and "interpolation" not in r]
        trained = [r for r in records if "loss" in r and r.get("loss") == r.get("loss")]
        line = axes.plot([offset + r["step"] for r in evals], [r["eval_wer"] for r in evals], marker="o",
                         label=f"{label}: eval WER ({evals[0].get('eval_decoding', 'generate') if evals else ''})")
        with_ctc = [r for r in evals if "ctc_wer" in r]
        if with_ctc:
            axes.plot([offset + r["step"] for r in with_ctc], [r["ctc_wer"] for r in with_ctc], marker="x",
                      linestyle="--", color=line[0].get_color(), label=f"{label}: CTC WER")
        if trained:
            losses.plot([offset + r["step"] for r in trained], [r["loss"] for r in trained], alpha=0.25,
                        color=line[0].get_color(), linewidth=0.8)
        offset += max((r.get("step", 0) for r in records), default=0)
    axes.set_xlabel("step")
    axes.set_ylabel("WER (dev set)")
    losses.set_ylabel("training loss per token (faint)")
    axes.grid(alpha=0.3)
    axes.set_title(title or "training curves")
    axes.legend(fontsize="small")
    return _save(figure, path)
