"""The command line: exit codes, one-line errors, --json output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import espeak_or_skip, read_jsonl

from asrtune.cli import main
from asrtune.data.manifest import read_manifest
from asrtune.evaluation.metrics import score


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err  # one clear line, no traceback
    assert lines[0].startswith("asrtune: error: ")
    return lines[0]


def test_evaluate_json_prints_scores_as_the_last_line(tiny_model_dir, tiny_data, tmp_path, capsys):
    _, eval_manifest = tiny_data
    code = main(
        [
            "evaluate",
            str(tiny_model_dir),
            "--data",
            str(eval_manifest),
            "--json",
            "--batch-size",
            "2",
            "--predictions",
            str(tmp_path / "pred.jsonl"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert (
        result["n"] == 3 and result["model"] == str(tiny_model_dir) and result["data"] == str(eval_manifest)
    )
    assert {"wer", "cer", "raw_wer", "substitutions", "deletions", "insertions"} <= set(result)
    assert "WER (normalised)" in captured.err  # with --json the table goes to stderr
    predictions = read_jsonl(tmp_path / "pred.jsonl")
    assert [p["reference"] for p in predictions] == [u.text for u in read_manifest(eval_manifest)]
    rescored = score([p["reference"] for p in predictions], [p["hypothesis"] for p in predictions])
    assert (result["wer"], result["cer"]) == (rescored.wer, rescored.cer)


def test_evaluate_without_json_prints_a_table(tiny_model_dir, tiny_data, capsys):
    assert main(["evaluate", str(tiny_model_dir), "--data", str(tiny_data[1])]) == 0
    out = capsys.readouterr().out
    assert "| WER (normalised)" in out and "| utterances" in out and "| 3 " in out


def test_evaluate_missing_manifest(tiny_model_dir, tmp_path, capsys):
    code = main(["evaluate", str(tiny_model_dir), "--data", str(tmp_path / "missing.jsonl"), "--json"])
    assert code == 2
    assert "manifest not found" in _error_line(capsys)
    assert capsys.readouterr().out == ""


def test_evaluate_missing_model(tiny_data, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "no-model"), "--data", str(tiny_data[1])]) == 2
    assert "model not found" in _error_line(capsys)


def test_train_unknown_config_key(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("loop:\n  max_steps: 2\n  epochs: 3\n")
    code = main(["train", str(tmp_path / "run.yaml"), "--output-dir", str(tmp_path / "out")])
    assert code == 2
    assert "unknown config key(s): loop.epochs" in _error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_train_bad_set_value(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("seed: 1\n")
    code = main(
        [
            "train",
            str(tmp_path / "run.yaml"),
            "--output-dir",
            str(tmp_path / "out"),
            "--set",
            "loop.max_steps=0",
        ]
    )
    assert code == 2
    assert "loop.max_steps must be >= 1" in _error_line(capsys)


def test_train_through_the_cli(tiny_model_dir, tiny_data, tmp_path, capsys):
    train_manifest, eval_manifest = tiny_data
    (tmp_path / "run.yaml").write_text(
        f"model: {tiny_model_dir}\nstrategy: lora:r=2,alpha=4\n"
        f"data:\n  train: {train_manifest}\n  eval: {eval_manifest}\n"
        "loop:\n  max_steps: 50\n  batch_size: 2\n  eval_every: 1\n  max_new_tokens: 3\n"
    )
    out_dir = tmp_path / "run"
    code = main(
        [
            "train",
            str(tmp_path / "run.yaml"),
            "--output-dir",
            str(out_dir),
            "--set",
            "loop.max_steps=1",
            "--set",
            "strategy=full",
            "--set",
            "optim.learning_rate=1e-4",
        ]
    )
    assert code == 0
    results = json.loads((out_dir / "results.json").read_text())
    assert (results["steps"], results["strategy"], results["learning_rate"]) == (1, "full", 1e-4)
    assert "final WER (best ckpt)" in capsys.readouterr().out
    # A second run into the same folder is refused with a one-line error.
    assert main(["train", str(tmp_path / "run.yaml"), "--output-dir", str(out_dir)]) == 2
    assert "already holds a run" in _error_line(capsys)


def test_synth_through_the_cli(tmp_path, capsys):
    espeak_or_skip()
    (tmp_path / "lines.txt").write_text("Hello there.\n\nGood night.\n")
    code = main(
        [
            "synth",
            str(tmp_path / "lines.txt"),
            "--out",
            str(tmp_path / "out"),
            "--prefix",
            "med",
            "--language",
            "en",
        ]
    )
    assert code == 0
    manifest = capsys.readouterr().out.strip()
    rows = read_manifest(manifest)
    assert [(r.id, r.text, r.language) for r in rows] == [
        ("med-00000", "Hello there.", "en"),
        ("med-00001", "Good night.", "en"),
    ]


def test_synth_missing_text_file(tmp_path, capsys):
    espeak_or_skip()
    assert main(["synth", str(tmp_path / "none.txt"), "--out", str(tmp_path / "out")]) == 2
    assert "text file not found" in _error_line(capsys)


def test_argparse_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "bundled:tiny.en"])  # --data is required
    assert info.value.code == 2
    assert "--data" in capsys.readouterr().err


def test_inspect_json_reports_trainable_and_total(tiny_model_dir, capsys):
    code = main(["inspect", str(tiny_model_dir), "--strategy", "lora:r=4,alpha=8", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # tiny model: 2 encoder layers x (q, v) + 2 decoder layers x (self q, v + cross q, v) = 12 targets,
    # each 32 -> 32 Linear with r = 4: 4 * (32 + 32) = 256 parameters.
    assert summary["trainable"] == 12 * 256
    assert summary["added"] == 12 * 256
    assert summary["total"] > summary["trainable"]
    layer_rows = [m for m in summary["modules"] if m["module"] == "encoder.layers.0"]
    assert layer_rows and layer_rows[0]["trainable"] == 2 * 256


def test_inspect_rejects_a_contradictory_spec_in_one_line(tiny_model_dir, capsys):
    assert main(["inspect", str(tiny_model_dir), "--strategy", "full+lora"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "full cannot be combined with lora" in err[0]


def test_the_command_line_starts_without_importing_torch():
    """Every command builds every parser: none may import torch to do it (seconds on every run)."""
    src = str(Path(__file__).resolve().parents[2] / "src")
    code = ("import sys; from asrtune.cli import build_parser, quiet_libraries; build_parser(); "
            "quiet_libraries(); print('torch' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("fails", [False, True])
def test_a_command_leaves_the_process_group_it_joined(tmp_path, monkeypatch, fails):
    """torchrun's processes must destroy their group before exit (else gloo can abort the finished run)."""
    import torch.distributed as dist

    from asrtune import demo
    from asrtune.errors import AsrtuneError

    def run_demo(output_dir, real_en, settings):
        assert dist.is_initialized()  # the command runs inside the group
        if fails:
            raise AsrtuneError("bad input")

    monkeypatch.setattr(demo, "run_demo", run_demo)
    monkeypatch.chdir(tmp_path)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert main(["demo", "--real-en", "none"]) == (2 if fails else 0)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
