"""The run folder's layout, in one place, and the few rules for writing into it.

Only the main process writes (the recipe checks); every file a run leaves is named here::

    config.yaml  metrics.jsonl  results.json  predictions.jsonl  base_transcripts.json
    tensorboard/  evaluation/  nonspeech/  checkpoints/{best,last}/  .encoder_cache/
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from asrtune.errors import AsrtuneError

__all__ = ["RunDir", "BEST", "LAST"]

BEST = "best"  # checkpoints/best: the kept checkpoint
LAST = "last"  # checkpoints/last: the latest, with everything a resume needs


@dataclass(frozen=True)
class RunDir:
    """Paths of one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.jsonl"

    @property
    def base_transcripts(self) -> Path:
        return self.root / "base_transcripts.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def nonspeech(self) -> Path:
        return self.root / "nonspeech"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def encoder_cache(self) -> Path:
        return self.root / ".encoder_cache"

    def holds_a_run(self) -> bool:
        return self.checkpoints.exists() or self.results.exists()

    def check_writable(self) -> None:
        """Create the folder and write a probe file: a folder that cannot be written fails now, not at step N.

        Raises:
            AsrtuneError: the folder cannot be created or written.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle, probe = tempfile.mkstemp(dir=self.root, prefix=".write-probe-")
            os.close(handle)
            os.unlink(probe)
        except OSError as error:
            raise AsrtuneError(f"cannot write the run folder {self.root}: {error.strerror or error}") from error

    def append_metric(self, record: dict) -> None:
        with self.metrics.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step: int) -> int:
        """Drop records after ``step`` (a resumed run replays those steps), and every weight-interpolation
        record: the mixes are scored after the last checkpoint, so a resumed run scores them again.
        Returns how many were dropped."""
        if not self.metrics.is_file():
            return 0
        kept, dropped = [], 0
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by kill -9 mid-write
                dropped += 1
                continue
            if record.get("step", 0) > step or "interpolation" in record:
                dropped += 1
            else:
                kept.append(line)
        staging = self.metrics.with_name(".metrics.jsonl.tmp")
        staging.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(staging, self.metrics)
        return dropped
