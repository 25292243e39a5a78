"""The house's shape: layers that point one way (import-linter's contracts in pyproject.toml), no import circle,
no test of a model family's identity outside ``models/``, and an ``import asrtune`` that loads no torch."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "src" / "asrtune"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(source_root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package found under ``source_root``, with the repository's contracts."""
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                          cwd=source_root, env=env, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    result = _lint_imports(REPO / "src")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


def test_an_upward_import_breaks_the_contracts(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "asrtune", ignore=shutil.ignore_patterns("__pycache__"))
    family = tmp_path / "asrtune" / "models" / "family.py"
    family.write_text(family.read_text() + "\n\ndef _upward():\n    from asrtune.training import recipe  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "asrtune.models.family -> asrtune.training.recipe" in result.stdout


def _circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), function-level imports included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph("asrtune", cache_dir=None, exclude_type_checking_imports=True)
    assert len(graph.modules) > 100
    assert _circles(graph) == []


def test_the_circle_finder_finds_a_circle():
    graph = grimp.ImportGraph()
    for module in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(module)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")
    assert _circles(graph) == [["p.a", "p.b", "p.c"]]


# A family's identity tested by name, membership or class: callers ask the family what it supports instead.
IDENTITY = re.compile(r"(name|family) *[!=]= *[\"'](whisper|qwen2_audio|qwen3_asr)[\"']"
                      r"|(name|family) +(not +)?in +[(\[{][^)\]}]*[\"'](whisper|qwen2_audio|qwen3_asr)[\"']"
                      r"|isinstance\([^)]*(WhisperFamily|Qwen2AudioFamily|Qwen3ASRFamily|ModelFamily)")


def test_no_family_identity_is_tested_outside_models():
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py")) if "models" not in path.relative_to(PACKAGE).parts
             for number, line in enumerate(path.read_text().splitlines(), 1) if IDENTITY.search(line)]
    assert found == []
    assert IDENTITY.search('if family.name == "whisper":') and IDENTITY.search("if name in ('qwen3_asr',):")


def test_import_asrtune_loads_no_torch():
    code = "import asrtune, sys; print('torch' in sys.modules, callable(asrtune.train) and 'torch' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "True"]  # no torch until a function is asked for


@pytest.mark.parametrize("name", ["train", "load_config", "RunConfig", "load_model", "evaluate", "transcribe"])
def test_the_python_api_is_documented(name):
    import asrtune

    member = getattr(asrtune, name)
    assert member.__doc__ and len(member.__doc__.strip()) > 20
    assert name in asrtune.__all__ and name in dir(asrtune)
    assert (PACKAGE / "py.typed").is_file()
