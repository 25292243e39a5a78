"""Where a run's numbers came from: asrtune's version (and commit, from its own checkout), the base
model's source and revision, and the versions of the libraries that computed them.

The git commit is recorded only when asrtune itself runs from a git checkout of asrtune: the
package's folder must lie in a git work tree whose top holds a ``pyproject.toml`` naming the
``asrtune`` project. An installed asrtune inside some other repository (a virtual environment in
a user's project) records no commit rather than that project's.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
from pathlib import Path

import tomllib

from asrtune.models.bundled import BUNDLED
from asrtune.version import __version__

__all__ = ["run_provenance", "asrtune_checkout", "git_commit", "model_provenance", "LIBRARIES"]

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "ctranslate2")
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _names_asrtune(pyproject: Path) -> bool:
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False
    return data.get("project", {}).get("name") == "asrtune"


def asrtune_checkout(package_dir: Path | None = None) -> Path | None:
    """The top of the git checkout of asrtune this package runs from, or None.

    Args:
        package_dir: the ``asrtune`` package folder (default: the imported one).
    """
    package_dir = Path(package_dir or Path(__file__).parent).resolve()
    for folder in package_dir.parents:
        if (folder / ".git").exists():  # the nearest work tree's top (.git is a file in worktrees)
            return folder if (folder / "pyproject.toml").is_file() and _names_asrtune(folder / "pyproject.toml") \
                else None
    return None


def git_commit(top: Path) -> dict | None:
    """``{"sha", "dirty"}`` of the checkout at ``top`` (dirty: tracked files differ from the commit)."""
    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(["git", "-C", str(top), *args], capture_output=True, text=True, timeout=10,
                                  check=False)
        except (OSError, subprocess.SubprocessError):
            return None

    head = git("rev-parse", "HEAD")
    if head is None or head.returncode != 0 or not _COMMIT.fullmatch(head.stdout.strip()):
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    dirty = None if status is None or status.returncode != 0 else bool(status.stdout.strip())
    return {"sha": head.stdout.strip(), "dirty": dirty}


def _hub_revision(repo_id: str) -> str | None:
    """The commit of a hub model as cached locally (offline: nothing is asked of the hub)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        path = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - an odd id or cache layout means "unknown", never a failed run
        return None
    if not isinstance(path, str):
        return None
    snapshot = Path(path).parent.name  # .../models--org--name/snapshots/<commit>/config.json
    return snapshot if _COMMIT.fullmatch(snapshot) else None


def model_provenance(source: str) -> dict:
    """What a model source is and, where it has one, its revision or package version.

    Returns:
        ``{"source", "kind"}`` plus ``package``/``package_version`` (bundled), ``revision`` (hub id,
        or a folder inside the hub cache's ``snapshots/<commit>``) or nothing more (a local folder).
    """
    record: dict = {"source": source}
    if source.startswith("bundled:"):
        record["kind"] = "bundled"
        entry = BUNDLED.get(source.removeprefix("bundled:"))
        if entry:
            modules = [entry[0]] + ([entry[2]] if entry[2] else [])
            record["packages"] = {m.replace("_", "-"): _version(m.replace("_", "-")) for m in modules}
        return record
    path = Path(source).expanduser()
    if path.exists():
        record["kind"] = "folder"
        resolved = path.resolve()
        if resolved.parent.name == "snapshots" and _COMMIT.fullmatch(resolved.name):
            record["revision"] = resolved.name
        return record
    if _HUB_ID.fullmatch(source):
        record["kind"] = "hub"
        record["revision"] = _hub_revision(source)
    return record


def run_provenance(model_source: str) -> dict:
    """Everything ``results.json`` records about where its numbers came from.

    Returns:
        ``{"asrtune": {"version", "git_sha", "git_dirty"}, "model": model_provenance(...),
        "libraries": {name: version}}``; ``git_sha`` is None unless asrtune runs from its own checkout.
    """
    top = asrtune_checkout()
    commit = git_commit(top) if top else None
    return {
        "asrtune": {
            "version": __version__,
            "git_sha": commit["sha"] if commit else None,
            "git_dirty": commit["dirty"] if commit else None,
        },
        "model": model_provenance(model_source),
        "libraries": {name: _version(name) for name in LIBRARIES},
    }
