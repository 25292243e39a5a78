"""``asrtune sweep``: grid parsing, sentence splits, run configs, tables, and a tiny end-to-end sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
import torch

from conftest import espeak_or_skip, read_jsonl, write_tiny_manifest

import asrtune.sweep.runner as runner
from asrtune.analysis.tables import (
    BaseRecord,
    RunRecord,
    aggregate,
    dataset_table,
    paper_orderings,
    sweep_points,
)
from asrtune.cli import main
from asrtune.config import GeneralSet
from asrtune.errors import AsrtuneError
from asrtune.sweep import load_sweep, sweep_from_dict
from asrtune.sweep.config import SplitSizes
from asrtune.sweep.data import (DatasetFiles, available_corpora, corpus_sentences, materialise, materialise_general,
                                split_sentences)
from asrtune.sweep.runner import run_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_grid_parsing_and_errors(tmp_path):
    grid = sweep_from_dict(
        {
            "model": "bundled:tiny.en",
            "strategies": [
                "full",
                {"spec": "freeze:n=2", "label": "freeze-2", "set": {"optim.learning_rate": 1e-4}},
            ],
            "datasets": [{"name": "mine", "train": "t.jsonl", "eval": "e.jsonl", "language": "sw"}],
            "seeds": [0, 1],
            "cka": False,
        },
        tmp_path,
    )
    assert [s.label for s in grid.strategies] == ["full", "freeze-2"]
    assert grid.strategies[1].overrides == (("optim.learning_rate", 1e-4),)
    assert grid.datasets[0].train == str(tmp_path / "t.jsonl") and grid.seeds == (0, 1)
    assert grid.cka.enabled is False
    assert (
        sweep_from_dict(
            {"strategies": ["lora:r=8,alpha=16"], "datasets": [{"name": "d", "train": "a", "eval": "b"}]}
        )
        .strategies[0]
        .slug
        == "lora_r8_alpha16"
    )
    for bad, message in [
        ({"strategy": ["full"]}, "unknown key"),
        ({"strategies": ["nope"], "datasets": [{"name": "d"}]}, "unknown strategy"),
        ({"strategies": ["full", "full"], "datasets": [{"name": "d"}]}, "given twice"),
        ({"strategies": ["full"], "datasets": [{"name": "d", "corpus": "x"}]}, "voice"),
        ({"strategies": ["full"], "datasets": [{"name": "d"}], "run": {"seed": 3}}, "run.seed"),
    ]:
        with pytest.raises(AsrtuneError, match=message):
            sweep_from_dict(bad)


@pytest.mark.parametrize("name", ["sweep-smoke.yaml", "paper-lowres.yaml", "sweep-forgetting.yaml"])
def test_shipped_grids_load(name):
    grid = load_sweep(CONFIGS / name)
    assert len(grid.strategies) >= 3 and {"full"} <= {s.spec for s in grid.strategies}
    for dataset in grid.datasets + grid.general:
        assert dataset.corpus in available_corpora() or not dataset.corpus, dataset.corpus


def test_paper_grid_covers_the_seven_languages():
    grid = load_sweep(CONFIGS / "paper-lowres.yaml")
    assert sorted(d.language for d in grid.datasets) == ["af", "be", "is", "kk", "mr", "ne", "sw"]
    assert grid.model == "bundled:base"


def test_sentence_splits_are_disjoint_and_seeded():
    sentences = [f"sentence {i}" for i in range(40)] + ["sentence 3"]  # a duplicate is dropped first
    splits = split_sentences(sentences, SplitSizes(train=20, validation=5, test=10), seed=1)
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [20, 5, 10]
    sets = [set(splits[k]) for k in ("train", "validation", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert split_sentences(sentences, SplitSizes(train=20, validation=5, test=10), seed=1) == splits
    assert split_sentences(sentences, SplitSizes(train=20, validation=5, test=10), seed=2) != splits
    default = split_sentences(sentences, None, 0)
    assert [len(default[k]) for k in ("train", "validation", "test")] == [26, 4, 10]
    assert len(split_sentences(sentences, SplitSizes(train=30, validation=5), 0)["test"]) == 5
    with pytest.raises(AsrtuneError, match="does not fit"):
        split_sentences(sentences, SplitSizes(train=40, validation=5), 0)


def test_corpus_dataset_is_spoken_and_split(tmp_path):
    espeak_or_skip()
    grid = sweep_from_dict(
        {
            "strategies": ["full"],
            "datasets": [
                {
                    "name": "med",
                    "corpus": "medical_en",
                    "voice": "en-us, en-gb",
                    "test_voice": "en-us+f4",
                    "language": "en",
                    "split": {"train": 2, "validation": 1, "test": 1},
                }
            ],
        }
    )
    files = materialise(grid.datasets[0], tmp_path / "med", progress=False)
    rows = {
        k: [json.loads(line) for line in Path(getattr(files, k)).read_text().splitlines()]
        for k in ("train", "eval", "test")
    }
    assert [len(rows[k]) for k in ("train", "eval", "test")] == [2, 1, 1]
    assert {r["text"] for k in rows for r in rows[k]} <= set(corpus_sentences("medical_en"))
    assert all(
        r["language"] == "en" and (Path(files.train).parent / r["audio"]).is_file() for r in rows["train"]
    )
    assert sorted(r["voice"] for r in rows["train"]) == ["en-gb", "en-us"]  # spread over both
    assert rows["eval"][0]["voice"] in ("en-us", "en-gb") and rows["test"][0]["voice"] == "en-us+f4"
    with pytest.raises(AsrtuneError, match="no packaged corpus"):
        corpus_sentences("klingon")


def test_general_manifest_subset_spreads_over_the_whole(tmp_path):
    rows = [{"id": f"u{i}", "audio": f"/a/{i}.wav", "text": f"line {i}", "duration": 1.0} for i in range(10)]
    manifest = tmp_path / "real.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = sweep_from_dict({"strategies": ["full"], "datasets": [{"name": "d", "train": "t", "eval": "e"}],
                            "general": [{"name": "real", "manifest": str(manifest), "sentences": 3}]}).general[0]
    general = materialise_general(spec, tmp_path / "general", progress=False)
    picked = [json.loads(line)["id"] for line in Path(general.manifest).read_text().splitlines()]
    assert picked == ["u0", "u3", "u6"]
    whole = materialise_general(sweep_from_dict({"strategies": ["full"], "datasets": [{"name": "d"}],
                                                 "general": [{"name": "real", "manifest": str(manifest)}]}).general[0],
                                tmp_path / "g2", progress=False)
    assert whole.manifest == str(manifest)
    missing = sweep_from_dict({"strategies": ["full"], "datasets": [{"name": "d"}],
                               "general": [{"name": "real", "manifest": str(tmp_path / "none.jsonl")}]}).general[0]
    with pytest.raises(AsrtuneError, match="no manifest"):
        materialise_general(missing, tmp_path / "g3", progress=False)
    with pytest.raises(AsrtuneError, match="test_voice"):
        sweep_from_dict({"strategies": ["full"], "datasets": [{"name": "d", "test_voice": "en-us"}]})


def test_run_config_applies_the_grid_then_the_strategy(tmp_path):
    grid = sweep_from_dict(
        {
            "model": "bundled:base",
            "strategies": [{"spec": "lora", "set": {"optim.learning_rate": 3e-4, "loop.max_steps": 7}}],
            "datasets": [{"name": "d", "train": "a", "eval": "b"}],
            "run": {"loop": {"max_steps": 20, "batch_size": 4}, "data": {"eval_limit": 5}},
        }
    )
    files = DatasetFiles(name="d", language="sw", train="/t.jsonl", eval="/e.jsonl", test="/x.jsonl")
    config = run_config(grid, files, grid.strategies[0], 3, (GeneralSet(name="g", manifest="/g.jsonl"),))
    assert (config.model, config.strategy, config.seed, config.language) == ("bundled:base", "lora", 3, "sw")
    assert (config.loop.max_steps, config.loop.batch_size, config.optim.learning_rate) == (7, 4, 3e-4)
    assert (config.data.train, config.data.test, config.data.eval_limit) == ("/t.jsonl", "/x.jsonl", 5)
    assert config.data.general == (GeneralSet(name="g", manifest="/g.jsonl"),)


def _record(label, spec, wer, seed=0, dataset="d", trainable=10, seconds=10.0, forgetting=0.01):
    return RunRecord(
        dataset=dataset,
        label=label,
        spec=spec,
        seed=seed,
        wer=wer,
        wer_ci=(wer - 0.1, wer + 0.1),
        eval_wer=wer,
        base_wer=0.8,
        trainable=trainable,
        total=1000,
        train_seconds=seconds,
        forgetting=forgetting,
        hallucination=0.0,
        nonspeech_words=0.5,
    )


def test_tables_by_hand():
    records = [
        _record("full", "full", 0.4, seed=0, trainable=1000, seconds=100),
        _record("full", "full", 0.2, seed=1, trainable=1000, seconds=60),
        _record("lora", "lora", 0.35, trainable=10, seconds=20),
    ]
    rows = aggregate(records)
    full = rows[0]
    assert (full.seeds, full.wer, full.train_seconds) == (2, pytest.approx(0.3), 80)
    assert full.wer_sd == pytest.approx(0.1414213, rel=1e-5)  # sample sd of 0.4 and 0.2
    base = BaseRecord(dataset="d", wer=0.6, wer_ci=(0.5, 0.7), hallucination=0.1, nonspeech_words=1.0)
    header, table = dataset_table("d", base, rows)
    cells = {row[0]: dict(zip(header, row, strict=True)) for row in table}
    assert cells["PT (base)"]["WER %"] == "60.0" and cells["PT (base)"]["vs full"] == "+100.0%"
    assert cells["full"]["WER %"] == "30.0 ± 14.1" and cells["full"]["vs PT"] == "-50.0%"
    assert cells["lora"]["vs full"] == "+16.7%" and cells["lora"]["% of base"] == "1.00"
    assert cells["lora"]["speed-up vs full"] == "4.0x" and cells["full"]["speed-up vs full"] == "1.0x"
    assert cells["lora"]["forgetting (ΔWER general, pts)"] == "+1.0"


def test_sweep_points_and_orderings():
    rows = aggregate(
        [
            _record("full", "full", 0.30),
            _record("f1", "freeze:n=1", 0.28),
            _record("f2", "freeze:n=2", 0.35),
            _record("a1", "adapter:encoder_layers=top-1", 0.4),
            _record("a2", "adapter:d=8,encoder_layers=top-2", 0.33),
            _record("all", "adapter", 0.32),
            _record("r1", "reinit:m=1", 0.25),
            _record("lo", "lora", 0.33, trainable=10),
        ]
    )
    assert sweep_points(rows, "freeze") == {"d": {1: 0.28, 2: 0.35}}
    assert sweep_points(rows, "adapter") == {"d": {1: 0.4, 2: 0.33}}
    bases = {"d": BaseRecord(dataset="d", wer=0.8, wer_ci=(0.7, 0.9), hallucination=0.0, nonspeech_words=0.0)}
    verdicts = {claim.split(" ")[0]: verdict for claim, verdict, _ in paper_orderings(bases, rows)}
    assert verdicts == {
        "FT": "reproduced",
        "freeze": "reproduced",
        "re-init": "not reproduced",
        "adapter": "reproduced",
        "lora": "reproduced",
    }
    assert paper_orderings(bases, rows[1:])[0][1] == "not in this grid"


def test_tiny_sweep_end_to_end_and_resume(tiny_model_dir, tiny_data, tmp_path, monkeypatch, capsys):
    general = write_tiny_manifest(tmp_path / "g", ["good morning", "blue sky today"], "general.jsonl")
    grid = {
        "model": str(tiny_model_dir),
        "strategies": ["full", "freeze:n=2"],
        "datasets": [
            {
                "name": "tones",
                "train": str(tiny_data[0]),
                "eval": str(tiny_data[1]),
                "test": str(tiny_data[1]),
                "language": "en",
            }
        ],
        "general": [{"name": "gen", "manifest": str(general)}],
        "run": {
            "optim": {"learning_rate": 1e-4},
            "loop": {
                "max_steps": 1,
                "batch_size": 2,
                "eval_every": 1,
                "eval_batch_size": 8,
                "max_new_tokens": 3,
            },
        },
        "cka": {"utterances": 2},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--output-dir", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "PT (base)" in printed and "freeze:n=2" in printed
    report = (out / "report.md").read_text()
    for label in ("full", "freeze:n=2"):
        assert f"| {label} " in report
        run = out / "runs" / "tones" / label.replace(":", "_").replace("=", "") / "seed-0"
        assert (run / "results.json").is_file() and (run / "cka.json").is_file()
    cka = json.loads((out / "runs" / "tones" / "freeze_n2" / "seed-0" / "cka.json").read_text())
    assert cka["encoder"] == {"0": pytest.approx(1.0), "1": pytest.approx(1.0)}  # encoder frozen whole
    assert "<table>" in (out / "report.html").read_text()
    for png in ("wer_by_strategy.png", "cka_tones.png"):
        assert (out / "plots" / png).read_bytes()[:4] == b"\x89PNG", png
    summary = json.loads((out / "sweep.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["full", "freeze:n=2"]

    # A second sweep trains nothing: every run has results.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(runner, "train", refuse)
    assert main(["sweep", str(path), "--output-dir", str(out), "--no-progress"]) == 0
    assert (out / "report.md").read_text() == report
    # --report-only decodes nothing either: the base model's scores are read back.
    monkeypatch.setattr(runner, "base_transcripts", refuse)
    assert main(["sweep", str(path), "--output-dir", str(out), "--no-progress", "--report-only"]) == 0
    assert (out / "report.md").read_text() == report


def test_a_run_is_skipped_resumed_or_started(tmp_path, monkeypatch):
    grid = sweep_from_dict({"strategies": ["full"], "datasets": [{"name": "d", "train": "a", "eval": "b"}]})
    files = DatasetFiles(name="d", language=None, train="/t.jsonl", eval="/e.jsonl", test="")
    plan = runner.plan_runs(grid, [files], (), tmp_path)[0]
    assert plan.run_dir == tmp_path / "runs" / "d" / "full" / "seed-0"
    calls = []
    monkeypatch.setattr(runner, "train", lambda config, run_dir, resume, **kw: calls.append(resume))
    assert runner._train_one(plan, {}, False) == "trained"
    (plan.run_dir / "checkpoints" / "last").mkdir(parents=True)
    (plan.run_dir / "checkpoints" / "last" / "state.json").write_text("{}")
    from asrtune.config import save_config

    save_config(plan.config, plan.run_dir / "config.yaml")  # the recipe writes it before any checkpoint
    assert runner._train_one(plan, {}, False) == "resumed"
    (plan.run_dir / "results.json").write_text(json.dumps({"config_hash": runner.planned_hash(plan)}))
    assert runner._train_one(plan, {}, False) == "skipped (has results)"
    assert calls == [False, True]


def _fake_train(calls):
    """A stand-in for the recipe: writes the results.json a run of ``config`` would (its hash included)."""
    from asrtune.config import config_hash

    def train(config, run_dir, resume, **kwargs):
        calls.append((run_dir, resume))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "results.json").write_text(json.dumps({"config_hash": config_hash(config)}))

    return train


def test_a_run_of_an_edited_grid_cell_is_rerun_not_skipped(tmp_path, monkeypatch):
    # The old sweep skipped any folder with results.json: after a grid edit (here max_steps 200 -> 50)
    # the report silently mixed the old run's numbers with the new grid's.
    files = DatasetFiles(name="d", language=None, train="/t.jsonl", eval="/e.jsonl", test="")
    before = sweep_from_dict({"strategies": ["full"], "datasets": [{"name": "d", "train": "a", "eval": "b"}]})
    after = sweep_from_dict({"strategies": ["full"], "datasets": [{"name": "d", "train": "a", "eval": "b"}],
                             "run": {"loop": {"max_steps": 50}}})
    calls = []
    monkeypatch.setattr(runner, "train", _fake_train(calls))
    old_plan = runner.plan_runs(before, [files], (), tmp_path)[0]
    assert runner._train_one(old_plan, {}, False) == "trained"
    old_hash = runner.recorded_hash(old_plan.run_dir)
    plan = runner.plan_runs(after, [files], (), tmp_path)[0]
    assert plan.run_dir == old_plan.run_dir and runner.planned_hash(plan) != old_hash
    assert "config hash" in runner.stale_run(plan)
    with pytest.raises(AsrtuneError, match=f"refused: its run was made from config hash {old_hash}"):
        runner._train_one(plan, {}, False, stale="refuse")
    assert len(calls) == 1  # refused: nothing trained, nothing moved
    outcome = runner._train_one(plan, {}, False)
    assert outcome.startswith(f"re-ran: its run was made from config hash {old_hash}")
    assert len(calls) == 2 and calls[1] == (plan.run_dir, False)  # from scratch, not resumed
    assert runner.recorded_hash(plan.run_dir) == runner.planned_hash(plan)
    kept = plan.run_dir.with_name(f"seed-0.stale-{old_hash}")
    assert runner.recorded_hash(kept) == old_hash  # the old run is kept, never deleted
    assert runner._train_one(plan, {}, False) == "skipped (has results)"


def test_a_run_whose_data_changed_is_rerun_not_skipped(tmp_path, monkeypatch):
    """Same grid, same manifest paths, other rows (a re-cut split, an edited corpus): the run is stale."""
    from asrtune.config import config_hash
    from asrtune.data.manifest import manifests_digest

    train = write_tiny_manifest(tmp_path / "data", ["one", "two"], "train.jsonl")
    test = write_tiny_manifest(tmp_path / "data", ["three"], "test.jsonl")
    files = DatasetFiles(name="d", language=None, train=str(train), eval=str(test), test=str(test))
    grid = sweep_from_dict({"strategies": ["full"], "datasets": [{"name": "d", "train": "a", "eval": "b"}]})
    plan = runner.plan_runs(grid, [files], (), tmp_path / "sweep")[0]
    calls = []

    def train_recording_its_data(config, run_dir, resume, **kwargs):
        calls.append(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "results.json").write_text(json.dumps(
            {"config_hash": config_hash(config), "data_digest": manifests_digest(config.data.manifests())}))

    monkeypatch.setattr(runner, "train", train_recording_its_data)
    assert runner._train_one(plan, {}, False) == "trained"
    assert runner._train_one(plan, {}, False) == "skipped (has results)"
    write_tiny_manifest(tmp_path / "data", ["three", "four"], "test.jsonl")  # the test split grew
    assert "its data changed since it ran" in runner.stale_run(plan)
    assert runner._train_one(plan, {}, False).startswith("re-ran: its data changed")
    assert len(calls) == 2 and runner.stale_run(plan) is None


def test_a_run_records_the_digest_of_every_manifest_it_reads(tmp_path):
    from asrtune.config import DataConfig, GeneralSet
    from asrtune.data.manifest import manifests_digest

    train = write_tiny_manifest(tmp_path / "a", ["one", "two"], "train.jsonl")
    general = write_tiny_manifest(tmp_path / "a", ["five"], "general.jsonl")
    data = DataConfig(train=str(train), eval=str(train), general=(GeneralSet(name="g", manifest=str(general)),))
    assert data.manifests() == {"train": str(train), "eval": str(train), "general:g": str(general)}
    digest = manifests_digest(data.manifests())
    (tmp_path / "a").rename(tmp_path / "b")  # audio paths are relative to the manifest: the same data
    moved = {role: path.replace(str(tmp_path / "a"), str(tmp_path / "b")) for role, path in data.manifests().items()}
    assert manifests_digest(moved) == digest
    write_tiny_manifest(tmp_path / "b", ["six"], "general.jsonl")
    assert manifests_digest(moved) != digest


def test_a_partial_run_of_an_edited_cell_is_not_resumed(tmp_path, monkeypatch):
    from asrtune.config import save_config

    files = DatasetFiles(name="d", language=None, train="/t.jsonl", eval="/e.jsonl", test="")
    grid = sweep_from_dict({"strategies": ["full"], "datasets": [{"name": "d", "train": "a", "eval": "b"}]})
    plan = runner.plan_runs(grid, [files], (), tmp_path)[0]
    (plan.run_dir / "checkpoints" / "last").mkdir(parents=True)
    (plan.run_dir / "checkpoints" / "last" / "state.json").write_text("{}")
    import dataclasses

    other = dataclasses.replace(plan.config, loop=dataclasses.replace(plan.config.loop, batch_size=3))
    save_config(other, plan.run_dir / "config.yaml")
    calls = []
    monkeypatch.setattr(runner, "train", _fake_train(calls))
    assert runner._train_one(plan, {}, False).startswith("re-ran")
    assert calls == [(plan.run_dir, False)]


def test_the_report_says_which_runs_were_rerun_or_left_out(tmp_path, monkeypatch):
    """run_sweep end to end with the recipe, the base model and the report stubbed out."""
    from dataclasses import dataclass

    @dataclass
    class Record:
        run: str

    files = DatasetFiles(name="d", language=None, train="/t.jsonl", eval="/e.jsonl", test="")
    spec = {"strategies": ["full", "freeze:n=1"], "datasets": [{"name": "d", "train": "a", "eval": "b"}],
            "cka": False}
    calls, written = [], []
    monkeypatch.setattr(runner, "train", _fake_train(calls))
    monkeypatch.setattr(runner, "materialise", lambda d, folder, progress: files)
    monkeypatch.setattr(runner, "load_model", lambda source: None)
    monkeypatch.setattr(runner, "build_eval_sets", lambda *a, **k: {})
    monkeypatch.setattr(runner, "base_transcripts", lambda *a, **k: {})
    monkeypatch.setattr(runner, "evidence", lambda *a, **k: {"main_set": None, "sets": {}})
    monkeypatch.setattr(runner, "_base_record", lambda name, report: Record(name))
    monkeypatch.setattr(runner, "read_run", lambda run_dir, **k: Record(str(run_dir)))
    monkeypatch.setattr(runner, "aggregate", lambda records: records)
    monkeypatch.setattr(runner, "write_report", lambda inputs, out: written.append(inputs) or (out / "r.md",
                                                                                              out / "r.html"))
    first = runner.run_sweep(sweep_from_dict(spec), tmp_path, progress=False)
    assert len(calls) == 2 and not first.failures
    edited = {**spec, "run": {"loop": {"max_steps": 7}}}
    refused = runner.run_sweep(sweep_from_dict(edited), tmp_path, progress=False, stale="refuse")
    assert len(calls) == 2 and len(refused.failures) == 2 and refused.records == []  # stale runs left out
    assert any("Left out 2 run(s)" in note for note in written[-1].notes)
    rerun = runner.run_sweep(sweep_from_dict(edited), tmp_path, progress=False)
    assert len(calls) == 4 and len(rerun.records) == 2
    assert any(note.startswith("Re-ran 2 run(s)") for note in written[-1].notes)
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert len(summary["reran"]) == 2 and summary["left_out"] == []


def test_every_figure_is_drawn_when_the_grid_allows(tmp_path):
    from asrtune.analysis.report import ReportInputs, write_report
    from asrtune.analysis.tables import summary_table
    from asrtune.report import format_table

    records = []
    for dataset in ("sw", "kk"):
        for label, spec, wer in [
            ("full", "full", 0.3),
            ("f1", "freeze:n=1", 0.28),
            ("f2", "freeze:n=2", 0.3),
            ("a1", "adapter:encoder_layers=top-1", 0.4),
            ("a2", "adapter:encoder_layers=top-2", 0.35),
        ]:
            record = _record(label, spec, wer, dataset=dataset)
            records.append(RunRecord(**{**record.__dict__, "cka": {0: 0.99, 1: 0.9}}))
    bases = {
        d: BaseRecord(dataset=d, wer=0.8, wer_ci=(0.7, 0.9), hallucination=0.0, nonspeech_words=0.0)
        for d in ("sw", "kk")
    }
    inputs = ReportInputs(
        title="t",
        model="m",
        datasets=["sw", "kk"],
        bases=bases,
        rows=aggregate(records),
        seeds=[0],
        notes=["synthetic"],
        failures=["kk / x / seed 0: boom"],
    )
    report_md, report_html = write_report(inputs, tmp_path)
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == [
        "adapter_top_p.png",
        "cka_full_by_language.png",
        "cka_kk.png",
        "cka_sw.png",
        "freeze_sweep.png",
        "wer_by_strategy.png",
    ]
    text = report_md.read_text()
    header, table = summary_table(["sw", "kk"], bases, inputs.rows)
    assert header == ["strategy", "sw", "kk", "avg", "% params", "train s (mean)"]
    assert table[0] == ["PT (base)", "80.0", "80.0", "80.0", "0.00", "-"]
    assert table[1] == ["full", "30.0", "30.0", "30.0", "1.00", "10.0"]
    assert format_table(header, table) in text
    assert "## Runs that failed" in text and "boom" in text and "> synthetic" in text
    assert report_html.read_text().count("<img") == len(pngs)


def test_transfer_and_joint_datasets_parse_and_refuse_bad_chains():
    grid = sweep_from_dict({"strategies": ["full"], "datasets": [
        {"name": "src", "train": "a", "eval": "b"}, {"name": "tgt", "train": "c", "eval": "d"},
        {"name": "tgt-via-src", "target": "tgt", "first": "src"},
        {"name": "tgt-joint-src", "target": "tgt", "joint": "src"}]})
    assert grid.datasets[2].composite and grid.datasets[3].joint == ("src",)
    for bad, message in [
        ({"name": "x", "target": "tgt"}, "give first"),
        ({"name": "x", "target": "tgt", "first": "src", "joint": ["src"]}, "give first"),
        ({"name": "x", "first": "src"}, "need a target"),
        ({"name": "x", "target": "tgt", "first": "later"}, "listed before it"),
        ({"name": "x", "target": "tgt", "first": "tgt"}, "target already"),
        ({"name": "x", "target": "tgt", "joint": ["src"], "language": "af"}, "takes its data"),
    ]:
        with pytest.raises(AsrtuneError, match=message):
            sweep_from_dict({"strategies": ["full"], "datasets": [
                {"name": "src", "train": "a", "eval": "b"}, {"name": "tgt", "train": "c", "eval": "d"}, bad]})


def test_shipped_transfer_grid_loads():
    grid = load_sweep(CONFIGS / "sweep-transfer.yaml")
    for dataset in grid.datasets:
        assert dataset.corpus in available_corpora() or dataset.composite, dataset
    kinds = {d.name: ("transfer" if d.first else "joint" if d.joint else "direct") for d in grid.datasets}
    assert {"af", "be", "af-via-nl", "be-via-ru", "af-joint-nl", "be-joint-ru"} <= set(kinds)
    assert kinds["af-via-nl"] == "transfer" and kinds["be-joint-ru"] == "joint"


@pytest.mark.parametrize("name", ["everyday_nl", "everyday_ru", "everyday_hi", "everyday_da"])
def test_related_language_corpora_are_packaged(name):
    # the higher-resource side of the pairs: nl for af, ru for be, hi for mr and ne, da for is
    sentences = corpus_sentences(name)
    assert len(set(sentences)) == len(sentences) >= 120


def test_a_tiny_sweep_chains_stages_and_mixes_languages(tiny_model_dir, tmp_path):
    source = write_tiny_manifest(tmp_path / "src", ["good morning", "blue sky today", "a red cup"], "train.jsonl",
                                 language="de")
    target = write_tiny_manifest(tmp_path / "tgt", ["hello there", "a green door"], "train.jsonl", language="en")
    grid = sweep_from_dict({
        "model": str(tiny_model_dir),
        "strategies": ["decoder"],
        "datasets": [
            {"name": "src", "train": str(source), "eval": str(source), "language": "de"},
            {"name": "tgt", "train": str(target), "eval": str(target), "test": str(target), "language": "en"},
            {"name": "tgt-via-src", "target": "tgt", "first": "src"},
            {"name": "tgt-joint-src", "target": "tgt", "joint": ["src"]},
        ],
        "run": {"optim": {"learning_rate": 1e-3},
                "loop": {"max_steps": 1, "batch_size": 2, "eval_every": 1, "eval_batch_size": 8,
                         "max_new_tokens": 3}},
        "cka": False,
    })
    out = tmp_path / "sweep"
    outcome = runner.run_sweep(grid, out, progress=False)
    assert not outcome.failures, outcome.failures
    assert {r.dataset for r in outcome.records} == {"src", "tgt", "tgt-via-src", "tgt-joint-src"}
    stage_1 = (out / "runs" / "src" / "decoder" / "seed-0").resolve()
    stage_2 = out / "runs" / "tgt-via-src" / "decoder" / "seed-0"
    chained = yaml.safe_load((stage_2 / "config.yaml").read_text())
    assert chained["init_from"] == str(stage_1) and chained["model"] == str(tiny_model_dir)
    assert chained["data"]["train"] == str(target)
    assert not (out / "stages").exists()  # no exported copy of stage 1
    joint = yaml.safe_load((out / "runs" / "tgt-joint-src" / "decoder" / "seed-0" / "config.yaml").read_text())
    rows = read_jsonl(joint["data"]["train"])
    assert [r["language"] for r in rows] == ["en", "en", "de", "de", "de"]  # each row keeps its language
    assert joint["data"]["eval"] == str(target) and joint["language"] == "en"
    # the composites score on the target's sets, so they share its base transcripts
    assert not (out / "base" / "tgt-via-src").exists() and not (out / "base" / "tgt-joint-src").exists()
    assert outcome.bases["tgt-via-src"].wer == outcome.bases["tgt"].wer
    # each composite run is paired with the direct run on the target's test utterances, in the report too
    direct = next(r for r in outcome.records if r.dataset == "tgt")
    assert [(c.dataset, c.how, c.n) for c in outcome.comparisons] == [("tgt-via-src", "via src", 2),
                                                                      ("tgt-joint-src", "joint with src", 2)]
    assert all(c.direct_wer == pytest.approx(direct.wer) for c in outcome.comparisons)
    report = (out / "report.md").read_text()
    assert "## Transfer and joint against direct fine-tuning" in report and "| joint with src |" in report
    # stage 2 starts from stage 1's kept weights, and its "before" is stage 1's model on the target
    from asrtune.config import config_from_dict
    from asrtune.runs.load import load_model as load
    from asrtune.runs.load import load_start_model

    first, start = load(str(stage_1)), load_start_model(config_from_dict(chained))
    for (name, a), b in zip(first.model.named_parameters(), start.model.parameters()):
        assert torch.equal(a, b), name
    results = json.loads((stage_2 / "results.json").read_text())
    stage_1_results = json.loads((stage_1 / "results.json").read_text())
    assert results["provenance"]["init_from"]["config_hash"] == stage_1_results["config_hash"]
    before = json.loads((stage_2 / "base_transcripts.json").read_text())["sets"]["eval"]
    assert json.loads(before["decoding"])["init_from"] == str(stage_1)  # decoded by stage 1, not the base
    shared = json.loads((out / "base" / "tgt" / "base_transcripts.json").read_text())["sets"]["eval"]
    assert "init_from" not in json.loads(shared["decoding"])  # the target's base row is the base model's
    assert list((out / "base" / "tgt").glob("base_transcripts-*.json"))  # stage 1 decoded apart from it
    # a stage 2 that started from another stage 1 than the one on disk is stale
    results["provenance"]["init_from"]["config_hash"] = "an-earlier-stage-1"
    (stage_2 / "results.json").write_text(json.dumps(results))
    refused = runner.run_sweep(grid, out, progress=False, stale="refuse")
    assert len(refused.failures) == 1 and "tgt-via-src" in refused.failures[0], refused.failures
    assert "started from a stage 1 of config hash an-earlier-stage-1" in refused.failures[0]
