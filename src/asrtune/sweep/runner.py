"""``asrtune sweep``: every (dataset, strategy, seed) of a grid as its own run folder, then the report.

Layout of the output folder::

    data/<dataset>/{train,validation,test}/   spoken corpora (or nothing: manifests are used in place)
    data/general/<name>/                       spoken general sets
    base/<dataset>/base_transcripts.json       the base model on every set, decoded once per dataset
                                               (and once more per other decoding_key a strategy asks for)
    base/<dataset>/evidence.json               its scores (the PT row); ``--report-only`` reads them
    runs/<dataset>/<strategy>/seed-<k>/        ordinary run folders (asrtune train), plus cka.json
    sweep.json  report.md  report.html  plots/*.png

A run with ``results.json`` is skipped and one with a last checkpoint is resumed, so an interrupted
sweep picks up where it stopped, but only when the folder's run was made from the cell's current
config (same ``config_hash``) and data (same ``data_digest`` of its manifests, when it recorded one):
after a grid edit, or a re-cut split, a stale run is moved aside (``seed-<k>.stale-<hash>``)
and trained again (``stale="rerun"``, the default), or refused and left out of the report
(``stale="refuse"``); the report says which runs were re-run or refused. A failed run is reported
and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import traceback
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from asrtune.analysis.cka import layer_cka
from asrtune.analysis.paired import PairedComparison, compare_runs
from asrtune.analysis.report import ReportInputs, write_report
from asrtune.analysis.tables import BaseRecord, Row, RunRecord, aggregate, read_run
from asrtune.config import (
    GeneralSet,
    RunConfig,
    absolute_model,
    apply_overrides,
    config_from_dict,
    config_hash,
    parse_yaml,
)
from asrtune.data.manifest import manifests_digest
from asrtune.errors import AsrtuneError
from asrtune.models.load import LoadedModel
from asrtune.runs.layout import LAST
from asrtune.runs.load import load_model
from asrtune.sweep.config import StrategyEntry, SweepConfig
from asrtune.sweep.data import DatasetFiles, materialise, materialise_composite, materialise_general
from asrtune.training.evidence import (
    BASE_TRANSCRIPTS,
    base_transcripts,
    build_eval_sets,
    decoding_key,
    evidence,
)
from asrtune.training.recipe import train

__all__ = ["SweepOutcome", "RunPlan", "run_config", "plan_runs", "run_sweep", "planned_hash", "recorded_hash",
           "STALE_CHOICES"]

STALE_CHOICES = ("rerun", "refuse")

SYNTHETIC_NOTE = (
    "Datasets built from packaged corpora are synthetic-voice benchmarks (espeak-ng reading "
    "sentences written for asrtune): they show the mechanics and a real model/domain gap, not "
    "accuracy on human speech. Real corpora go through `asrtune prepare` and are named by manifest."
)


@dataclass(frozen=True, kw_only=True)
class SweepOutcome:
    """What a sweep produced: per-run records, rows averaged over seeds, the base model per dataset."""

    records: list[RunRecord]
    rows: list[Row]
    bases: dict[str, BaseRecord]
    failures: list[str]
    report_md: Path
    report_html: Path
    comparisons: list[PairedComparison] = dataclasses.field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    dataset: DatasetFiles
    strategy: StrategyEntry
    seed: int
    run_dir: Path
    config: RunConfig
    stage_from: Path | None = None  # transfer: stage 1's run folder (the config's init_from)


def run_config(
    sweep: SweepConfig,
    dataset: DatasetFiles,
    strategy: StrategyEntry,
    seed: int,
    general: tuple[GeneralSet, ...],
    init_from: str = "",
) -> RunConfig:
    """The run config of one grid cell: the grid's ``run`` keys, the cell, then the strategy's overrides.

    ``init_from`` is a transfer's stage 1 run folder: stage 2 starts from its kept weights.
    """
    values = json.loads(json.dumps(sweep.run))
    values.update(model=sweep.model, init_from=init_from, strategy=strategy.spec, seed=seed,
                  language=dataset.language)
    values["data"] = {
        **values.get("data", {}),
        "train": dataset.train,
        "eval": dataset.eval,
        "test": dataset.test,
        "general": [{"name": g.name, "manifest": g.manifest} for g in general],
    }
    values = apply_overrides(values, [f"{key}={json.dumps(value)}" for key, value in strategy.overrides])
    return config_from_dict(values)


def plan_runs(
    sweep: SweepConfig, datasets: list[DatasetFiles], general: tuple[GeneralSet, ...], output_dir: Path
) -> list[RunPlan]:
    """Every cell of the grid, datasets outermost (so a dataset's runs share its base transcripts).

    A transfer cell (dataset with ``first``) is stage 2: its config's ``init_from`` names stage 1's
    run, ``runs/<first>/<strategy>/seed-<k>/``, whose kept weights it starts from.
    """
    plans = []
    for d in datasets:
        for s in sweep.strategies:
            for seed in sweep.seeds:
                cell = Path(s.slug) / f"seed-{seed}"
                stage_from = (output_dir / "runs" / d.first / cell).resolve() if d.first else None
                config = run_config(sweep, d, s, seed, general, str(stage_from or ""))
                plans.append(RunPlan(dataset=d, strategy=s, seed=seed, run_dir=output_dir / "runs" / d.name / cell,
                                     config=config, stage_from=stage_from))
    return plans


def stage_hash(run_dir: Path) -> str | None:
    """The config hash of a finished run (None: no results, or unreadable)."""
    try:
        return json.loads((run_dir / "results.json").read_text()).get("config_hash")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def started_from_hash(run_dir: Path) -> str | None:
    """The config hash of the run a finished transfer stage 2 started from (its ``provenance.init_from``)."""
    try:
        record = json.loads((run_dir / "results.json").read_text())["provenance"]["init_from"]
        return record.get("config_hash")
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None


def _base_record(name: str, report: dict) -> BaseRecord:
    main = report["sets"][report["main_set"]]
    nonspeech = report["sets"].get("nonspeech")
    return BaseRecord(
        dataset=name,
        wer=main["wer"],
        wer_ci=tuple(main["wer_ci95"]),
        hallucination=main["hallucination"]["rate"],
        nonspeech_words=nonspeech["words_per_clip"] if nonspeech else None,
        general={k: v["wer"] for k, v in report["sets"].items() if v["role"] == "general"},
        term_recall=main.get("term_recall"),
        term_insertions=main.get("term_insertions"),
    )


def planned_hash(plan: RunPlan) -> str:
    """The ``config_hash`` the cell's run records (the recipe hashes its config with the model made absolute)."""
    return config_hash(dataclasses.replace(plan.config, model=absolute_model(plan.config.model, Path.cwd())))


def recorded_hash(run_dir: Path) -> str | None:
    """The config hash of the run a folder holds: from ``results.json``, else from a partial run's config.yaml.

    None when the folder holds no run, or a run whose config cannot be read (then it counts as stale).
    """
    results = run_dir / "results.json"
    if results.is_file():
        try:
            return json.loads(results.read_text()).get("config_hash")
        except (json.JSONDecodeError, AttributeError):
            return None
    config = run_dir / "config.yaml"
    if config.is_file():
        try:
            return config_hash(config_from_dict(parse_yaml(config.read_text())))
        except (AsrtuneError, ValueError, TypeError):
            return None
    return None


def recorded_data_digest(run_dir: Path) -> str | None:
    """The digest of the manifests a finished run read (None: unfinished, or a run from before digests)."""
    results = run_dir / "results.json"
    try:
        return json.loads(results.read_text()).get("data_digest") if results.is_file() else None
    except (json.JSONDecodeError, AttributeError):
        return None


def _holds_run(run_dir: Path) -> bool:
    return (run_dir / "results.json").is_file() or (run_dir / "checkpoints").exists()


def stale_run(plan: RunPlan) -> str | None:
    """Why the cell's folder holds a run made from another config (None: no run there, or the same config)."""
    if not _holds_run(plan.run_dir):
        return None
    recorded, wanted = recorded_hash(plan.run_dir), planned_hash(plan)
    if recorded != wanted:
        return f"its run was made from config hash {recorded or 'unknown'}, the grid now gives {wanted}"
    data = recorded_data_digest(plan.run_dir)
    if data is not None and data != manifests_digest(plan.config.data.manifests()):
        return f"its data changed since it ran: the manifests it read (digest {data}) differ now"
    if plan.stage_from is not None and (plan.run_dir / "results.json").is_file():
        started, stage_1 = started_from_hash(plan.run_dir), stage_hash(plan.stage_from)
        if started != stage_1:
            return (f"it started from a stage 1 of config hash {started or 'unknown'}, and stage 1 "
                    f"({plan.stage_from}) is now {stage_1 or 'unfinished'}")
    return None


def _set_aside(run_dir: Path) -> Path:
    """Move a stale run out of the cell's way (never deleted); returns where it went."""
    recorded = recorded_hash(run_dir) or "unknown"
    target = run_dir.with_name(f"{run_dir.name}.stale-{recorded}")
    count = 1
    while target.exists():
        count += 1
        target = run_dir.with_name(f"{run_dir.name}.stale-{recorded}-{count}")
    run_dir.rename(target)
    return target


def _train_one(plan: RunPlan, baseline: dict, progress: bool, stale: str = "rerun") -> str:
    """Run, resume or skip one cell; returns what happened.

    A folder whose run has another config hash than the cell's (the grid was edited) is re-run from
    scratch after moving the old run aside, or refused (AsrtuneError), as ``stale`` says.
    """
    why = stale_run(plan)
    moved = None
    if why:
        if stale == "refuse":
            raise AsrtuneError(f"refused: {why}; move or delete {plan.run_dir}, or run with --stale rerun")
        moved = _set_aside(plan.run_dir)
    elif (plan.run_dir / "results.json").is_file():
        return "skipped (has results)"
    if plan.stage_from is not None and stage_hash(plan.stage_from) is None:
        raise AsrtuneError(f"transfer stage 1 {plan.stage_from} has no results; stage 2 cannot start")
    resume = (plan.run_dir / "checkpoints" / LAST / "state.json").is_file()
    train(plan.config, plan.run_dir, resume=resume, progress=progress, baseline_transcripts=baseline)
    if moved:
        return f"re-ran: {why}; the old run is kept at {moved}"
    return "resumed" if resume else "trained"


def _cka(plan: RunPlan, sweep: SweepConfig, base: LoadedModel, sets: dict, progress: bool) -> None:
    path = plan.run_dir / "cka.json"
    if not sweep.cka.enabled or path.is_file() or not (plan.run_dir / "results.json").is_file():
        return
    target = sets.get("test") or sets["eval"]
    tuned = load_model(str(plan.run_dir))
    result = layer_cka(
        base,
        tuned,
        target.dataset,
        decoder=sweep.cka.decoder,
        batch_size=sweep.cka.batch_size,
        utterances=sweep.cka.utterances,
        progress=progress,
    )
    path.write_text(
        json.dumps(
            {
                **result.as_json(),
                "utterances": result.utterances,
                "frames": result.frames,
                "tokens": result.tokens,
                "set": target.name,
            },
            indent=1,
        )
    )


def _against_direct(sweep: SweepConfig, plans: list[RunPlan], scored: set[Path],
                    failures: list[str]) -> list[PairedComparison]:
    """Each scored transfer or joint run paired with the direct run of the same strategy and seed on its
    target (both scored on the target's test utterances); a pair that cannot be made is a failure."""
    cells = {(p.dataset.name, p.strategy.label, p.seed): p for p in plans}
    entries = {d.name: d for d in sweep.datasets}
    found = []
    for plan in plans:
        entry = entries[plan.dataset.name]
        direct = cells.get((entry.target, plan.strategy.label, plan.seed)) if entry.composite else None
        if direct is None or plan.run_dir not in scored or direct.run_dir not in scored:
            continue
        how = f"via {entry.first}" if entry.first else f"joint with {', '.join(entry.joint)}"
        try:
            found.append(compare_runs(direct.run_dir, plan.run_dir, target=entry.target, dataset=entry.name,
                                      how=how, label=plan.strategy.label, seed=plan.seed,
                                      language=plan.dataset.language))
        except (AsrtuneError, OSError, ValueError) as error:
            failures.append(f"{entry.name} / {plan.strategy.label} / seed {plan.seed} against {entry.target}: "
                            f"not paired: {error}")
    return found


def run_sweep(
    sweep: SweepConfig,
    output_dir: str | Path,
    *,
    progress: bool = True,
    report_only: bool = False,
    stale: str = "rerun",
) -> SweepOutcome:
    """Run (or resume) the whole grid, write the report and ``sweep.json``.

    Args:
        stale: what to do with a cell whose folder holds a run of another config (the grid was
            edited since): ``rerun`` (move it aside, train again) or ``refuse`` (a failure, left out
            of the report). ``report_only`` never trains: such runs are left out and listed.
    """
    if stale not in STALE_CHOICES:
        raise AsrtuneError(f"stale must be one of {', '.join(STALE_CHOICES)}, not {stale!r}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    general = tuple(
        materialise_general(g, output_dir / "data" / "general" / g.name, progress=progress)
        for g in sweep.general
    )
    built: dict[str, DatasetFiles] = {}
    for d in sweep.datasets:  # composites name datasets listed before them
        folder = output_dir / "data" / d.name
        built[d.name] = materialise_composite(d, built, folder) if d.composite else materialise(
            d, folder, progress=progress)
    datasets = list(built.values())
    plans = plan_runs(sweep, datasets, general, output_dir)
    base = load_model(sweep.model)  # decodes the base transcripts and is CKA's reference
    bases: dict[str, BaseRecord] = {}
    failures: list[str] = []
    reran: list[str] = []
    left_out: list[str] = []
    records: list[RunRecord] = []
    scored: set[Path] = set()  # run folders whose records are this grid's
    bar = tqdm(total=len(plans), desc="sweep", unit="run", disable=not progress)
    for dataset in datasets:
        mine = [p for p in plans if p.dataset.name == dataset.name]
        config = dataclasses.replace(mine[0].config, init_from="")  # the base model's row: no stage 1
        folder = output_dir / "base" / (dataset.base_of or dataset.name)  # same sets, same base transcripts
        folder.mkdir(parents=True, exist_ok=True)
        if report_only and (folder / "evidence.json").is_file():  # decode nothing: the base the runs saw
            saved = json.loads((folder / "evidence.json").read_text())
            bases[dataset.name] = _base_record(dataset.name, saved)
            sets, baseline = {}, {}
        else:
            sets = build_eval_sets(config, base, folder / "nonspeech", progress=progress)
            baseline = base_transcripts(config, sets, folder / BASE_TRANSCRIPTS, base=base, progress=progress)
            base_evidence = evidence(sets, baseline, None)
            (folder / "evidence.json").write_text(json.dumps(base_evidence, indent=1))
            bases[dataset.name] = _base_record(dataset.name, base_evidence)
        baselines = {decoding_key(config): baseline}  # by decoding settings: base and tuned decoded alike
        for plan in mine:
            where = f"{dataset.name} / {plan.strategy.label} / seed {plan.seed}"
            if not report_only:
                try:
                    key = decoding_key(plan.config)
                    if key not in baselines:  # overrides changed how it decodes, or it starts from stage 1
                        name = f"base_transcripts-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"
                        baselines[key] = base_transcripts(  # init_from: "before" is stage 1's kept model
                            plan.config, sets, folder / name, base=None if plan.config.init_from else base,
                            progress=progress
                        )
                    outcome = _train_one(plan, baselines[key], progress, stale)
                    if outcome.startswith("re-ran"):
                        reran.append(f"{where}: {outcome}")
                    _cka(plan, sweep, base, sets, progress)
                    tqdm.write(f"sweep: {where}: {outcome}")
                except (AsrtuneError, RuntimeError, ValueError, OSError) as error:
                    failures.append(f"{where}: {type(error).__name__}: {error}")
                    tqdm.write(f"sweep: {where} failed:\n{traceback.format_exc()}")
            why = stale_run(plan)
            if why:  # refused, failed before training, or --report-only: its numbers are not this grid's
                left_out.append(f"{where}: {why}")
                bar.update(1)
                continue
            record = read_run(
                plan.run_dir,
                dataset=dataset.name,
                label=plan.strategy.label,
                spec=plan.strategy.spec,
                seed=plan.seed,
            )
            if record:
                records.append(record)
                scored.add(plan.run_dir)
            bar.update(1)
    bar.close()
    comparisons = _against_direct(sweep, plans, scored, failures)
    rows = aggregate(records)
    notes = [SYNTHETIC_NOTE] if any(d.corpus for d in sweep.datasets + sweep.general) else []
    if reran:
        notes.append(f"Re-ran {len(reran)} run(s) whose grid cell changed since their results were written "
                     "(another config hash); the old runs are kept beside them: " + "; ".join(reran))
    if left_out:
        notes.append(f"Left out {len(left_out)} run(s) made from another config than the grid's (stale "
                     f"{'runs refused' if stale == 'refuse' else 'runs'}; re-run them with `asrtune sweep` and "
                     "--stale rerun): " + "; ".join(left_out))
    inputs = ReportInputs(
        title="asrtune sweep",
        model=sweep.model,
        datasets=[d.name for d in datasets],
        bases=bases,
        rows=rows,
        seeds=list(sweep.seeds),
        failures=failures,
        notes=notes,
        comparisons=comparisons,
    )
    report_md, report_html = write_report(inputs, output_dir)
    summary = {
        "model": sweep.model,
        "runs": [dataclasses.asdict(r) for r in records],
        "base": {k: dataclasses.asdict(v) for k, v in bases.items()},
        "failures": failures,
        "reran": reran,
        "left_out": left_out,
        "against_direct": [dataclasses.asdict(c) for c in comparisons],
        "report": str(report_md),
        "report_html": str(report_html),
    }
    (output_dir / "sweep.json").write_text(json.dumps(summary, indent=1))
    return SweepOutcome(
        records=records,
        rows=rows,
        bases=bases,
        failures=failures,
        report_md=report_md,
        report_html=report_html,
        comparisons=comparisons,
    )
