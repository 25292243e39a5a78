"""A sweep's report: ``report.md`` and ``report.html`` (Markdown rendered with python-markdown) with
the tables of :mod:`asrtune.analysis.tables` and the PNG figures of :mod:`asrtune.analysis.plots`.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import markdown

from asrtune.analysis import plots
from asrtune.analysis.paired import PairedComparison, comparison_table
from asrtune.analysis.tables import (
    BaseRecord,
    Row,
    dataset_table,
    forgetting_table,
    least_forgetting,
    paper_orderings,
    summary_table,
    sweep_points,
)
from asrtune.report import format_table

__all__ = ["ReportInputs", "write_report", "make_plots"]


@dataclass(frozen=True, kw_only=True)
class ReportInputs:
    """What the report shows: the grid's description, the base model per dataset, the averaged rows."""

    title: str
    model: str
    datasets: list[str]
    bases: dict[str, BaseRecord]
    rows: list[Row]
    seeds: list[int]
    notes: list[str]
    failures: list[str]
    comparisons: list[PairedComparison] = field(default_factory=list)  # transfer / joint against direct


def make_plots(inputs: ReportInputs, folder: Path) -> dict[str, Path]:
    """Write every figure the data allows into ``folder``; returns caption -> path."""
    figures: dict[str, Path] = {}
    wers = {d: {"PT": inputs.bases[d].wer} if d in inputs.bases else {} for d in inputs.datasets}
    for row in inputs.rows:
        wers[row.dataset][row.label] = row.wer
    if inputs.rows:
        figures["WER per strategy per dataset"] = plots.plot_wer_bars(wers, folder / "wer_by_strategy.png")
    for dataset in inputs.datasets:
        curves = {r.label: r.cka for r in inputs.rows if r.dataset == dataset and r.cka}
        if curves:
            figures[f"Encoder CKA per layer, base vs tuned ({dataset})"] = plots.plot_cka(
                curves, folder / f"cka_{dataset}.png", title=f"encoder CKA, base vs tuned: {dataset}"
            )
    full_curves = {r.dataset: r.cka for r in inputs.rows if r.spec == "full" and r.cka}
    if len(full_curves) > 1:
        figures["Encoder CKA of full fine-tuning per language (seed 002, Fig. 1)"] = plots.plot_cka(
            full_curves, folder / "cka_full_by_language.png", title="encoder CKA after full fine-tuning"
        )
    full = {r.dataset: r.wer for r in inputs.rows if r.spec == "full"}
    freeze = sweep_points(inputs.rows, "freeze")
    if any(len(p) > 1 for p in freeze.values()):
        figures["WER against frozen bottom layers N (seed 002, Fig. 2)"] = plots.plot_param_curve(
            freeze,
            folder / "freeze_sweep.png",
            xlabel="frozen bottom encoder layers N",
            reference=full,
            title="freeze:n=N",
        )
    adapter = sweep_points(inputs.rows, "adapter")
    if any(len(p) > 1 for p in adapter.values()):
        figures["WER against top encoder layers with adapters P (seed 002, Fig. 6)"] = plots.plot_param_curve(
            adapter,
            folder / "adapter_top_p.png",
            xlabel="top encoder layers with adapters P",
            reference=full,
            title="adapter:encoder_layers=top-P",
        )
    return figures


def _markdown(inputs: ReportInputs, figures: dict[str, Path], folder: Path) -> str:
    lines = [
        f"# {inputs.title}",
        "",
        f"Base model `{inputs.model}`; seeds {', '.join(map(str, inputs.seeds))}; WER on each dataset's "
        "held-out test sentences (never used to choose a checkpoint), in percent. Relative changes as in "
        "seed 002 (negative: fewer errors). Training time is the optimizer steps plus any frozen-encoder "
        "cache pass, on this machine.",
        "",
    ]
    lines += [f"> {note}" for note in inputs.notes] + ([""] if inputs.notes else [])
    if len(inputs.datasets) > 1 or inputs.rows:
        lines += [
            "## All datasets (Tables 4 and 6)",
            "",
            format_table(*summary_table(inputs.datasets, inputs.bases, inputs.rows)),
            "",
        ]
    for dataset in inputs.datasets:
        lines += [
            f"## {dataset}",
            "",
            format_table(*dataset_table(dataset, inputs.bases.get(dataset), inputs.rows)),
            "",
        ]
        base = inputs.bases.get(dataset)
        if base is not None and base.general and inputs.rows:
            verdict = least_forgetting(dataset, base, inputs.rows)
            lines += [
                f"### Forgetting per general set ({dataset})",
                "",
                format_table(*forgetting_table(dataset, base, inputs.rows)),
                "",
                *([verdict, ""] if verdict else []),
            ]
    if inputs.comparisons:
        lines += [
            "## Transfer and joint against direct fine-tuning",
            "",
            "Each run of a transfer or joint dataset beside the direct run of the same strategy and seed, on "
            "the target's test utterances. Δ is its WER minus the direct run's, with a paired-bootstrap 95% "
            "interval (the same utterances resampled for both runs): an interval that excludes 0 is a "
            "difference this test set shows. A run via a related language also trained stage 1's steps; a "
            "joint run spent the same steps on the target's and the related languages' sentences.",
            "",
            format_table(*comparison_table(inputs.comparisons)),
            "",
        ]
    lines += [
        "## Seed 002's orderings",
        "",
        format_table(
            ["claim", "verdict", "numbers"], [list(c) for c in paper_orderings(inputs.bases, inputs.rows)]
        ),
        "",
    ]
    if figures:
        lines += ["## Figures", ""]
        for caption, path in figures.items():
            lines += [f"### {caption}", "", f"![{caption}]({path.relative_to(folder).as_posix()})", ""]
    if inputs.failures:
        lines += ["## Runs that failed", ""] + [f"- {f}" for f in inputs.failures] + [""]
    lines += [
        "## Columns",
        "",
        "- **forgetting**: the largest WER change, in points, on the general sets against the base model "
        "(positive: worse); the kept checkpoint is the best one within `loop.forgetting_budget`.",
        "- **forgetting per general set**: each general set's WER before (PT) and after, and its relative change; "
        "*general rise per domain gain* is the worst general set's relative rise divided by the domain's relative "
        "fall (lower: forgets less for what it gains; `-` when the domain did not improve).",
        "- **halluc. %**: share of test hypotheses that loop (an n-gram repeated back to back) or have more "
        "than twice the reference's words.",
        "- **non-speech words/clip**: words emitted on generated silence, white/pink/brown noise and hum.",
        "- **term recall %** / **term insertions** (runs with `data.terms`): the share of the term list's "
        "occurrences in the test references that the hypotheses have, and term occurrences the hypotheses add.",
        "",
    ]
    return "\n".join(lines)


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}
blockquote{color:#555;border-left:3px solid #ccc;margin-left:0;padding-left:1em}"""


def write_report(inputs: ReportInputs, folder: Path) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and the figures into ``folder``; returns the two report paths."""
    folder.mkdir(parents=True, exist_ok=True)
    figures = make_plots(inputs, folder / "plots")
    text = _markdown(inputs, figures, folder)
    (folder / "report.md").write_text(text, encoding="utf-8")
    body = markdown.markdown(text, extensions=["tables"])
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(inputs.title)}</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )
    (folder / "report.html").write_text(page, encoding="utf-8")
    return folder / "report.md", folder / "report.html"
