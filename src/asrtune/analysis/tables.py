"""Sweep results as seed 002's tables: one record per run, averaged over seeds, then rows of text.

Columns follow Tables 4-6: the base model (PT) and each strategy's WER, the relative change against
PT and against ``full``, trainable parameters (count and % of the base), training time and the
speed-up against ``full`` (seed 002 reports 5.2x for adapters, 5.6x for LoRA), plus what the paper
only discusses: forgetting (WER change on the general sets), hallucination and words on non-speech.
:func:`forgetting_table` shows each general set on its own (a held-out voice and real speech forget
differently) and which strategy forgets least for the domain WER it gains.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from asrtune.strategies import parse_spec

__all__ = [
    "RunRecord",
    "BaseRecord",
    "Row",
    "read_run",
    "aggregate",
    "dataset_table",
    "forgetting_table",
    "least_forgetting",
    "summary_table",
    "sweep_points",
    "paper_orderings",
    "fmt_pct",
    "fmt_rel",
    "fmt_seconds",
]


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One finished run, reduced to what the tables show. WERs are fractions."""

    dataset: str
    label: str
    spec: str
    seed: int
    wer: float
    wer_ci: tuple[float, float]
    eval_wer: float
    base_wer: float
    trainable: int
    total: int
    train_seconds: float
    forgetting: float | None = None
    hallucination: float | None = None
    nonspeech_words: float | None = None
    best_step: int = 0
    within_budget: bool = True
    cka: dict[int, float] | None = None
    general: dict[str, float] = field(default_factory=dict)  # WER of the kept checkpoint per general set
    term_recall: float | None = None  # on the main set, with data.terms
    term_insertions: int | None = None


@dataclass(frozen=True, kw_only=True)
class BaseRecord:
    """The base model (PT) on one dataset."""

    dataset: str
    wer: float
    wer_ci: tuple[float, float]
    hallucination: float | None
    nonspeech_words: float | None
    general: dict[str, float] = field(default_factory=dict)
    term_recall: float | None = None
    term_insertions: int | None = None


@dataclass(frozen=True, kw_only=True)
class Row:
    """A strategy on a dataset, averaged over its seeds (``wer_sd`` 0 for one seed)."""

    dataset: str
    label: str
    spec: str
    seeds: int
    wer: float
    wer_sd: float
    wer_ci: tuple[float, float]
    trainable: int
    total: int
    train_seconds: float
    forgetting: float | None
    hallucination: float | None
    nonspeech_words: float | None
    within_budget: bool
    cka: dict[int, float] | None
    general: dict[str, float] = field(default_factory=dict)
    term_recall: float | None = None
    term_insertions: float | None = None

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total


def _step_seconds(run_dir: Path) -> float:
    """Seconds spent in optimizer steps (forward, backward, update), from metrics.jsonl."""
    total = 0.0
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line)
        if "loss" in record and "seconds" in record:
            total += record["seconds"]
    return total


def read_run(run_dir: Path, *, dataset: str, label: str, spec: str, seed: int) -> RunRecord | None:
    """A run folder's record, or None when it has no results yet."""
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    evidence = results["evaluation"]
    main = evidence["sets"][evidence["main_set"]]
    nonspeech = evidence["sets"].get("nonspeech")
    forgetting = evidence.get("forgetting")
    cka_path = run_dir / "cka.json"
    cka = (
        {int(k): v for k, v in json.loads(cka_path.read_text())["encoder"].items()}
        if cka_path.is_file()
        else None
    )
    return RunRecord(
        dataset=dataset,
        label=label,
        spec=spec,
        seed=seed,
        wer=main["wer"],
        wer_ci=tuple(main["wer_ci95"]),
        eval_wer=results["final_wer"],
        base_wer=main["base"]["wer"],
        trainable=results["trainable_params"],
        total=results["total_params"],
        train_seconds=_step_seconds(run_dir) + results.get("encoder_cache_seconds", 0.0),
        forgetting=forgetting["max"] if forgetting else None,
        hallucination=main["hallucination"]["rate"],
        nonspeech_words=nonspeech["words_per_clip"] if nonspeech else None,
        best_step=results["best_step"],
        within_budget=results.get("best_within_budget", True),
        cka=cka,
        general={name: s["wer"] for name, s in evidence["sets"].items() if s.get("role") == "general"},
        term_recall=main.get("term_recall"),
        term_insertions=main.get("term_insertions"),
    )


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def aggregate(records: list[RunRecord]) -> list[Row]:
    """Average each (dataset, label) over its seeds, keeping the order of first appearance."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for record in records:
        groups.setdefault((record.dataset, record.label), []).append(record)
    rows = []
    for (dataset, label), items in groups.items():
        wers = [r.wer for r in items]
        ckas = [r.cka for r in items if r.cka]
        rows.append(
            Row(
                dataset=dataset,
                label=label,
                spec=items[0].spec,
                seeds=len(items),
                wer=statistics.fmean(wers),
                wer_sd=statistics.stdev(wers) if len(wers) > 1 else 0.0,
                wer_ci=(
                    statistics.fmean(r.wer_ci[0] for r in items),
                    statistics.fmean(r.wer_ci[1] for r in items),
                ),
                trainable=items[0].trainable,
                total=items[0].total,
                train_seconds=statistics.fmean(r.train_seconds for r in items),
                forgetting=_mean(r.forgetting for r in items),
                hallucination=_mean(r.hallucination for r in items),
                nonspeech_words=_mean(r.nonspeech_words for r in items),
                within_budget=all(r.within_budget for r in items),
                cka={k: statistics.fmean(c[k] for c in ckas) for k in ckas[0]} if ckas else None,
                general={name: statistics.fmean(r.general[name] for r in items)
                         for name in items[0].general if all(name in r.general for r in items)},
                term_recall=_mean(r.term_recall for r in items),
                term_insertions=_mean(r.term_insertions for r in items),
            )
        )
    return rows


def fmt_pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def fmt_rel(new: float | None, old: float | None) -> str:
    """Relative change in percent, as the paper reports it (negative: fewer errors)."""
    if new is None or not old:
        return "-"
    return f"{100 * (new - old) / old:+.1f}%"


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f}" if seconds >= 100 else f"{seconds:.1f}"


def _full(rows: list[Row]) -> Row | None:
    return next((r for r in rows if r.spec == "full"), None)


def dataset_table(
    dataset: str, base: BaseRecord | None, rows: list[Row]
) -> tuple[list[str], list[list[str]]]:
    """Tables 4-6 for one dataset: PT, then one row per strategy."""
    rows = [r for r in rows if r.dataset == dataset]
    full = _full(rows)
    header = [
        "strategy",
        "WER %",
        "95% CI",
        "vs PT",
        "vs full",
        "trainable",
        "% of base",
        "train s",
        "speed-up vs full",
        "forgetting (ΔWER general, pts)",
        "halluc. %",
        "non-speech words/clip",
    ]
    table = []
    if base is not None:
        table.append(
            [
                "PT (base)",
                fmt_pct(base.wer),
                f"{fmt_pct(base.wer_ci[0])}-{fmt_pct(base.wer_ci[1])}",
                "-",
                fmt_rel(base.wer, full.wer) if full else "-",
                "0",
                "0.00",
                "-",
                "-",
                "0.0",
                fmt_pct(base.hallucination),
                "-" if base.nonspeech_words is None else f"{base.nonspeech_words:.2f}",
            ]
        )
    for row in rows:
        wer = fmt_pct(row.wer) + (f" ± {fmt_pct(row.wer_sd)}" if row.seeds > 1 else "")
        speedup = f"{full.train_seconds / row.train_seconds:.1f}x" if full and row.train_seconds > 0 else "-"
        forgetting = (
            "-"
            if row.forgetting is None
            else f"{100 * row.forgetting:+.1f}" + ("" if row.within_budget else " (over budget)")
        )
        table.append(
            [
                row.label,
                wer,
                f"{fmt_pct(row.wer_ci[0])}-{fmt_pct(row.wer_ci[1])}",
                fmt_rel(row.wer, base.wer if base else None),
                fmt_rel(row.wer, full.wer) if full else "-",
                f"{row.trainable:,}",
                f"{row.trainable_percent:.2f}",
                fmt_seconds(row.train_seconds),
                speedup,
                forgetting,
                fmt_pct(row.hallucination),
                "-" if row.nonspeech_words is None else f"{row.nonspeech_words:.2f}",
            ]
        )
    return _with_terms(header, table, [base, *rows] if base is not None else rows)


def _with_terms(header: list[str], table: list[list[str]], records: list) -> tuple[list[str], list[list[str]]]:
    """Term recall and term insertions columns (on the main set), when any run was scored with a term list."""
    if all(r.term_recall is None for r in records):
        return header, table
    cells = [[fmt_pct(r.term_recall), "-" if r.term_insertions is None else f"{r.term_insertions:g}"]
             for r in records]
    return header + ["term recall %", "term insertions"], [row + extra for row, extra in zip(table, cells)]


def _relative(new: float | None, old: float | None) -> float | None:
    return None if new is None or not old else (new - old) / old


def _forgetting_cost(row: Row, base: BaseRecord) -> tuple[float | None, float | None, float | None]:
    """(domain relative change, worst general relative change, general rise per unit of domain gain)."""
    gain = _relative(row.wer, base.wer)
    rises = [_relative(row.general[g], base.general.get(g)) for g in row.general]
    rises = [r for r in rises if r is not None]
    worst = max(rises) if rises else None
    per_gain = max(worst, 0.0) / -gain if worst is not None and gain is not None and gain < 0 else None
    return gain, worst, per_gain


def forgetting_table(
    dataset: str, base: BaseRecord | None, rows: list[Row]
) -> tuple[list[str], list[list[str]]]:
    """Forgetting per general set: PT and each strategy's WER there, its change against PT, beside the
    domain WER; the last column is the worst general rise per unit of domain gain (lower: forgets less
    for what it gains)."""
    rows = [r for r in rows if r.dataset == dataset]
    names = list(dict.fromkeys([*(base.general if base else {}), *(g for r in rows for g in r.general)]))
    header = ["strategy", "domain WER %", "vs PT"]
    for name in names:
        header += [f"{name} WER %", f"{name} vs PT"]
    header += ["worst general vs PT", "general rise per domain gain"]
    table = []
    if base is not None:
        table.append(["PT (base)", fmt_pct(base.wer), "-",
                      *[c for g in names for c in (fmt_pct(base.general.get(g)), "-")], "-", "-"])
    for row in rows:
        gain, worst, per_gain = _forgetting_cost(row, base) if base else (None, None, None)
        cells = [row.label + ("" if row.within_budget else " (over budget)"), fmt_pct(row.wer),
                 fmt_rel(row.wer, base.wer if base else None)]
        for g in names:
            cells += [fmt_pct(row.general.get(g)), fmt_rel(row.general.get(g), base.general.get(g) if base else None)]
        cells += ["-" if worst is None else f"{100 * worst:+.1f}%", "-" if per_gain is None else f"{per_gain:.2f}"]
        table.append(cells)
    return header, table


def least_forgetting(dataset: str, base: BaseRecord | None, rows: list[Row]) -> str | None:
    """One sentence naming the strategy with the smallest general rise per unit of domain gain."""
    if base is None or not base.general:
        return None
    costs = [(row, *_forgetting_cost(row, base)) for row in rows if row.dataset == dataset]
    ranked = sorted((c for c in costs if c[3] is not None), key=lambda c: (c[3], c[1]))
    if not ranked:
        return None
    row, gain, worst, per_gain = ranked[0]
    return (f"Forgets least for its domain gain on {dataset}: {row.label} (domain {100 * gain:+.1f}% vs PT, worst "
            f"general set {100 * worst:+.1f}%, {per_gain:.2f} points of general rise per point of domain gain).")


def summary_table(
    datasets: list[str], bases: dict[str, BaseRecord], rows: list[Row]
) -> tuple[list[str], list[list[str]]]:
    """Table 4/6 across languages: WER % per dataset and the average, trainable % and mean training time."""
    header = ["strategy", *datasets, "avg", "% params", "train s (mean)"]
    table = [
        [
            "PT (base)",
            *[fmt_pct(bases[d].wer) if d in bases else "-" for d in datasets],
            fmt_pct(_mean(bases[d].wer for d in datasets if d in bases)),
            "0.00",
            "-",
        ]
    ]
    labels = list(dict.fromkeys(r.label for r in rows))
    for label in labels:
        mine = {r.dataset: r for r in rows if r.label == label}
        table.append(
            [
                label,
                *[fmt_pct(mine[d].wer) if d in mine else "-" for d in datasets],
                fmt_pct(_mean(mine[d].wer for d in datasets if d in mine)),
                f"{_mean(r.trainable_percent for r in mine.values()):.2f}",
                fmt_seconds(_mean(r.train_seconds for r in mine.values())),
            ]
        )
    return header, table


def sweep_points(rows: list[Row], kind: str) -> dict[str, dict[int, float]]:
    """WER against N for ``freeze:n=N`` rows (kind "freeze") or P for ``adapter:...encoder_layers=top-P``
    rows (kind "adapter"), per dataset. Only single-strategy specs count."""
    points: dict[str, dict[int, float]] = {}
    for row in rows:
        strategies = parse_spec(row.spec)
        if len(strategies) != 1 or strategies[0].name != kind:
            continue
        strategy = strategies[0]
        if kind == "freeze":
            x = strategy.n
        elif kind == "adapter" and strategy.encoder_layers.startswith("top-"):
            x = int(strategy.encoder_layers.removeprefix("top-"))
        else:
            continue
        points.setdefault(row.dataset, {})[x] = row.wer
    return {d: p for d, p in points.items() if len(p) >= 1}


def _family(rows: list[Row], name: str) -> list[Row]:
    return [r for r in rows if parse_spec(r.spec)[0].name == name and len(parse_spec(r.spec)) == 1]


def paper_orderings(bases: dict[str, BaseRecord], rows: list[Row]) -> list[tuple[str, str, str]]:
    """Seed 002's orderings, checked on WER averaged over datasets: (claim, verdict, numbers).

    Verdicts: "reproduced", "not reproduced", or "not in this grid". A family's best row stands for
    it (the paper reports each family's best setting in Tables 5 and 6).
    """
    datasets = sorted({r.dataset for r in rows})

    def average(items: list[Row]) -> float | None:
        best = {}
        for r in items:
            if r.dataset not in best or r.wer < best[r.dataset].wer:
                best[r.dataset] = r
        return _mean(best[d].wer for d in datasets) if len(best) == len(datasets) else None

    def mean_percent(items: list[Row]) -> float | None:
        return _mean(r.trainable_percent for r in items)

    pt = _mean(bases[d].wer for d in datasets if d in bases)
    full = average([r for r in rows if r.spec == "full"])
    out = []
    if full is None or pt is None:
        return [("FT >> PT", "not in this grid", "needs `full` and the base model")]
    drop = (pt - full) / pt if pt else 0.0
    out.append(
        (
            "FT >> PT (fine-tuning cuts WER a lot)",
            "reproduced" if drop >= 0.2 else "not reproduced",
            f"PT {100 * pt:.1f}% -> full {100 * full:.1f}% ({-100 * drop:+.1f}% relative)",
        )
    )
    checks = [
        ("freeze", "freeze >= FT (freezing the bottom layers is at least as good)", lambda w: w <= full),
        ("reinit", "re-init <= FT (re-initialising top layers does not help)", lambda w: w >= full),
    ]
    for family, claim, holds in checks:
        wer = average(_family(rows, family))
        out.append(
            (
                claim,
                "not in this grid" if wer is None else "reproduced" if holds(wer) else "not reproduced",
                "-" if wer is None else f"best {family} {100 * wer:.1f}% vs full {100 * full:.1f}%",
            )
        )
    for family in ("adapter", "lora"):
        items = _family(rows, family)
        wer, percent = average(items), mean_percent(items)
        claim = f"{family} a little behind FT with ~1% of the parameters"
        if wer is None:
            out.append((claim, "not in this grid", "-"))
            continue
        behind = (wer - full) / full if full else 0.0
        ok = 0 <= behind <= 0.35 and percent is not None and percent <= 5
        out.append(
            (
                claim,
                "reproduced" if ok else "not reproduced",
                f"{family} {100 * wer:.1f}% vs full {100 * full:.1f}% ({100 * behind:+.1f}% relative), "
                f"{percent:.2f}% of the parameters",
            )
        )
    return out
