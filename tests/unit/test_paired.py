"""Two runs compared on the same utterances (a sweep's transfer and joint runs against direct)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asrtune.analysis.paired import compare_runs, comparison_table
from asrtune.errors import AsrtuneError

REFERENCES = ["red green blue black", "apple pear plum peach", "north south east west", "the cat sat down"]


def _run(folder: Path, hypotheses: list[str], ids: list[str] | None = None, main_set: str = "test") -> Path:
    (folder / "evaluation").mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"evaluation": {"main_set": main_set}}))
    ids = ids or [f"u{i}" for i in range(len(hypotheses))]
    rows = [{"id": i, "reference": r, "base": None, "hypothesis": h} for i, r, h in zip(ids, REFERENCES, hypotheses)]
    (folder / "evaluation" / f"{main_set}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


def _compare(direct: Path, other: Path, **kwargs):
    return compare_runs(direct, other, target="af", dataset="af-via-nl", how="via nl", label="decoder", seed=0,
                        language="en", resamples=200, **kwargs)


def test_a_run_is_paired_with_direct_utterance_by_utterance(tmp_path):
    direct = _run(tmp_path / "direct", ["red green glue black", "apple bear plum beach", "north south east west",
                                        "the cat sat down"])
    via = _run(tmp_path / "via", ["red green blue black", "apple pear plum peach", "north south east",
                                  "the cat sat down"])
    found = _compare(direct, via)
    assert (found.n, found.set_name) == (4, "test")
    assert found.direct_wer == pytest.approx(3 / 16) and found.wer == pytest.approx(1 / 16)
    assert found.delta == pytest.approx(-2 / 16)
    assert (found.wins, found.losses) == (2, 1)
    low, high = found.delta_ci
    assert low <= found.delta <= high and low < 0
    header, rows = comparison_table([found])
    assert rows == [["af", "decoder", "0", "via nl", "18.8", "6.2", rows[0][6], "2 / 1 of 4"]]
    assert rows[0][6].startswith("-12.5 [") and header[6].startswith("Δ pts")


def test_runs_on_other_utterances_are_not_paired(tmp_path):
    direct = _run(tmp_path / "direct", REFERENCES)
    shuffled = _run(tmp_path / "other", REFERENCES, ids=["u1", "u0", "u2", "u3"])
    with pytest.raises(AsrtuneError, match="not scored on the same utterances"):
        _compare(direct, shuffled)
    other_set = _run(tmp_path / "eval-only", REFERENCES, main_set="eval")
    with pytest.raises(AsrtuneError, match="not scored on the same utterances"):
        _compare(direct, other_set)
    (direct / "evaluation" / "test.jsonl").unlink()
    with pytest.raises(AsrtuneError, match="cannot be paired"):
        _compare(direct, other_set)
