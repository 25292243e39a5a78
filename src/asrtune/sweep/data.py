"""A sweep's datasets on disk: packaged corpora spoken by espeak-ng, split by sentence, or manifests.

A corpus dataset is split by *sentence* (as :func:`asrtune.demo.demo_splits` does), with the
dataset's own seed, so no test sentence is ever trained on and every run seed sees the same data.
These are synthetic-voice benchmarks: they show the mechanics and a real model/domain gap, not
accuracy on human speech. Real corpora go through ``asrtune prepare`` and are named by manifest.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from asrtune.config import GeneralSet
from asrtune.data.manifest import read_manifest, write_manifest
from asrtune.data.synth import SynthSettings, parse_voices, synthesise_lines
from asrtune.errors import AsrtuneError
from asrtune.sweep.config import DatasetSpec, SplitSizes

__all__ = [
    "DatasetFiles",
    "available_corpora",
    "corpus_sentences",
    "split_sentences",
    "materialise",
    "materialise_composite",
    "materialise_general",
]

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True, kw_only=True)
class DatasetFiles:
    """Manifests of one target dataset."""

    name: str
    language: str | None
    train: str
    eval: str
    test: str
    first: str = ""  # transfer: the dataset whose run (same strategy and seed) is stage 1
    base_of: str = ""  # a chained or joint dataset shares its target's base-model transcripts


def available_corpora() -> list[str]:
    """Names of the packaged sentence lists (``asrtune/data/corpora/*.txt``; not the term lists and
    templates kept beside them: ``*_terms_*``, ``*_templates_*``)."""
    folder = resources.files("asrtune.data.corpora")
    return sorted(p.name.removesuffix(".txt") for p in folder.iterdir()
                  if p.name.endswith(".txt") and "_terms_" not in p.name and "_templates_" not in p.name)


def corpus_sentences(name: str) -> list[str]:
    """A packaged corpus, one sentence per non-empty line.

    Raises:
        AsrtuneError: no such corpus.
    """
    path = resources.files("asrtune.data.corpora").joinpath(f"{name}.txt")
    if not path.is_file():
        raise AsrtuneError(f"no packaged corpus {name!r} (available: {', '.join(available_corpora())})")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def split_sentences(sentences: list[str], sizes: SplitSizes | None, seed: int) -> dict[str, list[str]]:
    """Shuffle with ``seed`` and cut into train / validation / test.

    Without sizes: 10% validation, 25% test, the rest train. Duplicate sentences are dropped first,
    so the same sentence can never land on both sides of a split.
    """
    unique = list(dict.fromkeys(sentences))
    random.Random(seed).shuffle(unique)
    if sizes is None:
        n_val, n_test = max(1, len(unique) // 10), max(1, len(unique) // 4)
        sizes = SplitSizes(train=len(unique) - n_val - n_test, validation=n_val, test=n_test)
    n_test = sizes.test if sizes.test is not None else len(unique) - sizes.train - sizes.validation
    if min(sizes.train, sizes.validation, n_test) < 1 or sizes.train + sizes.validation + n_test > len(
        unique
    ):
        raise AsrtuneError(
            f"split {sizes.train}/{sizes.validation}/{n_test} does not fit {len(unique)} sentences"
        )
    first, second = sizes.train, sizes.train + sizes.validation
    return {
        "train": unique[:first],
        "validation": unique[first:second],
        "test": unique[second : second + n_test],
    }


def _speak(lines: list[str], folder: Path, spec: DatasetSpec, split: str, index: int, progress: bool) -> str:
    voices = parse_voices(spec.test_voice if split == "test" and spec.test_voice else spec.voice)
    settings = SynthSettings(voices=voices, seed=spec.seed * 100 + index)
    return str(
        synthesise_lines(
            lines,
            folder,
            settings=settings,
            prefix=f"{spec.name}-{split}",
            language=spec.language,
            progress=progress,
        )
    )


def materialise(spec: DatasetSpec, folder: Path, *, progress: bool = True) -> DatasetFiles:
    """Train / eval / test manifests of a target dataset, synthesising a corpus into ``folder`` if needed.

    Speech already on disk is reused, so an interrupted sweep does not speak it twice.
    """
    if not spec.corpus:
        if not (spec.train and spec.eval):
            raise AsrtuneError(f"sweep dataset {spec.name}: give a corpus, or train and eval manifests")
        return DatasetFiles(
            name=spec.name, language=spec.language, train=spec.train, eval=spec.eval, test=spec.test
        )
    splits = split_sentences(corpus_sentences(spec.corpus), spec.split, spec.seed)
    manifests = {
        split: _speak(splits[split], folder / split, spec, split, i, progress)
        for i, split in enumerate(SPLITS)
    }
    return DatasetFiles(
        name=spec.name,
        language=spec.language,
        train=manifests["train"],
        eval=manifests["validation"],
        test=manifests["test"],
    )


def materialise_composite(spec: DatasetSpec, built: dict[str, DatasetFiles], folder: Path) -> DatasetFiles:
    """A chained (``first``) or joint dataset from datasets already built (``built``, by name).

    Both score on the target's validation and test sets. Transfer trains on the target's train split
    (from stage 1's weights, which the sweep runner supplies); joint writes one train manifest of the
    target's rows followed by each ``joint`` dataset's, every row keeping its own ``language``.
    """
    target = built[spec.target]
    train = target.train
    if spec.joint:
        rows = list(read_manifest(target.train))
        for name in spec.joint:
            other = built[name]
            rows += [row if row.language else dataclasses.replace(row, language=other.language)
                     for row in read_manifest(other.train)]
        write_manifest(rows, folder / "train.jsonl")
        train = str(folder / "train.jsonl")
    return DatasetFiles(name=spec.name, language=target.language, train=train, eval=target.eval,
                        test=target.test, first=spec.first, base_of=target.name)


def materialise_general(spec: DatasetSpec, folder: Path, *, progress: bool = True) -> GeneralSet:
    """A general set's manifest: the first ``sentences`` of a corpus, spoken, or the given manifest
    (``sentences`` rows of it spread evenly over the whole, when given)."""
    if not spec.corpus:
        if not spec.manifest:
            raise AsrtuneError(f"sweep general set {spec.name}: give a corpus or a manifest")
        if not Path(spec.manifest).is_file():
            raise AsrtuneError(f"sweep general set {spec.name}: no manifest {spec.manifest}")
        if spec.sentences is None:
            return GeneralSet(name=spec.name, manifest=spec.manifest)
        rows = read_manifest(spec.manifest)
        picked = rows[:: max(1, len(rows) // spec.sentences)][: spec.sentences]
        folder.mkdir(parents=True, exist_ok=True)
        write_manifest(picked, folder / "manifest.jsonl")
        return GeneralSet(name=spec.name, manifest=str(folder / "manifest.jsonl"))
    lines = corpus_sentences(spec.corpus)[: spec.sentences]
    return GeneralSet(name=spec.name, manifest=_speak(lines, folder, spec, "general", 9, progress))
