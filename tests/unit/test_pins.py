"""The suite runs on the versions constraints.txt pins, and pyproject's ranges admit them.

A refreshed constraints.txt (``make constraints``) is tested by the next ``make test``: these tests fail
when the environment was installed without the constraints, or when a pin falls outside what
pyproject.toml promises users.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
CORE = ("torch", "transformers", "peft", "accelerate", "torchdata", "ctranslate2", "jiwer")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        requirements += [Requirement(r) for r in extra]
    return {re.sub(r"[-_.]+", "-", r.name).lower(): r for r in requirements}


def test_every_direct_dependency_is_pinned_and_admitted_by_its_range():
    pins = _pins()
    for name, requirement in _requirements().items():
        assert name in pins, f"{name} is not in constraints.txt"
        assert requirement.specifier.contains(Version(pins[name]), prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {requirement.specifier}")


@pytest.mark.parametrize("name", CORE)
def test_the_suite_runs_on_the_pinned_versions(name):
    assert metadata.version(name) == _pins()[name], f"installed {name} is not the pinned one: make test installs it"


def test_transformers_is_capped_at_the_newest_minor_tested():
    pinned = Version(_pins()["transformers"])
    cap = [s for s in _requirements()["transformers"].specifier if s.operator == "<"]
    assert cap and Version(cap[0].version) == Version(f"{pinned.major}.{pinned.minor + 1}")


def test_torch_is_a_range_for_users_not_the_cpu_wheel():
    assert "==" not in str(_requirements()["torch"].specifier)
