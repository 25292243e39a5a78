"""benchmarks/gpu.py on a machine without a GPU: a clear message and exit status 0, nothing measured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the benchmark would run for real")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--work-dir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no GPU: torch.cuda.is_available() is False")
    assert not (tmp_path / "work").exists()  # no speech synthesised, no run started


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--steps", "3", "--warmup", "3"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "--warmup must be smaller than --steps" in done.stderr
