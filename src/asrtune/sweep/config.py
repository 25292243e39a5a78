"""The sweep grid: strategies x datasets x seeds, read from YAML into frozen dataclasses.

```yaml
model: bundled:tiny.en
seeds: [0]
strategies:                     # a spec, or {spec, label, set: {dotted.key: value}}
  - full
  - {spec: "freeze:n=2", set: {optim.learning_rate: 1.0e-4}}
datasets:                       # a packaged corpus spoken by espeak-ng, or manifests
  - {name: medical, corpus: medical_en, voice: en-us, language: en,
     split: {train: 80, validation: 20, test: 30}}
  - {name: mine, train: data/train.jsonl, eval: data/dev.jsonl, test: data/test.jsonl, language: sw}
  - {name: af-via-nl, target: af, first: nl}       # transfer: each strategy's nl run, then af from its weights
  - {name: af-joint-nl, target: af, joint: [nl]}   # joint: one train manifest mixing af and nl rows
general:                        # general sets, scored for forgetting in every run
  - {name: general_en, corpus: general_en, voice: en-us, language: en, sentences: 30}
run: {loop: {max_steps: 25}}    # any run-config keys, applied to every run (then each strategy's `set`)
cka: {utterances: 16}           # or `cka: false`
```

Unknown keys are errors; relative manifest paths are relative to the YAML file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from asrtune.config import parse_yaml
from asrtune.errors import AsrtuneError
from asrtune.strategies import parse_spec

__all__ = [
    "StrategyEntry",
    "SplitSizes",
    "DatasetSpec",
    "CKASettings",
    "SweepConfig",
    "load_sweep",
    "sweep_from_dict",
]


@dataclass(frozen=True, kw_only=True)
class StrategyEntry:
    """One strategy of the grid: its spec, a short label, and run-config overrides (``--set`` style)."""

    spec: str
    label: str = ""
    overrides: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        parse_spec(self.spec)  # a bad spec fails when the grid is read, not hours later
        if not self.label:
            object.__setattr__(self, "label", self.spec)

    @property
    def slug(self) -> str:
        """A folder name: ``freeze:n=2`` -> ``freeze_n2``."""
        return re.sub(r"[^A-Za-z0-9.+-]+", "_", self.label.replace("=", "")).strip("_")


@dataclass(frozen=True, kw_only=True)
class SplitSizes:
    """Sentences per split of a packaged corpus (None for test: every sentence left)."""

    train: int
    validation: int
    test: int | None = None


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """A target (or general) dataset: a packaged corpus to synthesise, or manifests.

    Attributes:
        name: the dataset's name in folders and tables.
        corpus: packaged sentence list (``asrtune.data.corpora``), e.g. ``everyday_sw``, ``medical_en``.
        voice: espeak-ng voice(s) for a corpus: one, or a comma-separated list the lines are spread over
            (``en-us, en-gb+f2``); train and validation for a target corpus.
        test_voice: voice(s) of a target corpus's test split (empty: ``voice``); give voices absent from
            ``voice`` so the test set measures speech the model never trained on.
        language: language code of the speech (the run's ``language``).
        split: sentence counts for a target corpus; general corpora use ``sentences``.
        sentences: how many sentences of a general corpus (None: all).
        train, eval, test: manifests, instead of a corpus (general sets: ``manifest``).
        seed: the seed of the sentence split and the synthetic voices (fixed across run seeds).
        target: a chained or joint dataset: the dataset (listed earlier) whose language, validation and
            test sets it uses; with ``first`` or ``joint``, and no data of its own.
        first: transfer in two stages: stage 1 is this earlier dataset's run of the same strategy and
            seed, stage 2 trains on ``target``'s train split starting from stage 1's weights.
        joint: earlier datasets whose train splits are mixed into ``target``'s (rows keep their language).
    """

    name: str
    corpus: str = ""
    voice: str = ""
    test_voice: str = ""
    language: str | None = None
    split: SplitSizes | None = None
    sentences: int | None = None
    train: str = ""
    eval: str = ""
    test: str = ""
    manifest: str = ""
    seed: int = 0
    target: str = ""
    first: str = ""
    joint: tuple[str, ...] = ()

    @property
    def composite(self) -> bool:
        """A chained (``first``) or joint dataset built from other datasets of the grid."""
        return bool(self.target)

    def __post_init__(self) -> None:
        if self.target:
            if bool(self.first) == bool(self.joint):
                raise AsrtuneError(f"sweep dataset {self.name}: with target, give first (transfer) or joint, "
                                   "not both")
            if self.corpus or self.train or self.eval or self.test or self.manifest or self.language:
                raise AsrtuneError(f"sweep dataset {self.name}: a target dataset takes its data and language "
                                   f"from {self.target} and the datasets it names")
        elif self.first or self.joint:
            raise AsrtuneError(f"sweep dataset {self.name}: first and joint need a target")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name or ""):
            raise AsrtuneError(f"sweep dataset name {self.name!r}: use letters, digits, _ . -")
        if self.corpus and not self.voice:
            raise AsrtuneError(f"sweep dataset {self.name}: a corpus needs an espeak-ng voice")
        if self.test_voice and not self.corpus:
            raise AsrtuneError(f"sweep dataset {self.name}: test_voice applies to a corpus only")


@dataclass(frozen=True, kw_only=True)
class CKASettings:
    enabled: bool = True
    utterances: int = 100  # seed 002 samples 100 utterances per language
    decoder: bool = False
    batch_size: int = 8


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    model: str
    strategies: tuple[StrategyEntry, ...]
    datasets: tuple[DatasetSpec, ...]
    general: tuple[DatasetSpec, ...] = ()
    seeds: tuple[int, ...] = (0,)
    run: dict = field(default_factory=dict)
    cka: CKASettings = field(default_factory=CKASettings)
    base_dir: Path = Path(".")

    def __post_init__(self) -> None:
        if not self.strategies or not self.datasets or not self.seeds:
            raise AsrtuneError("a sweep needs at least one strategy, one dataset and one seed")
        for kind, items in (
            ("strategy label", [s.slug for s in self.strategies]),
            ("dataset name", [d.name for d in self.datasets + self.general]),
        ):
            duplicated = sorted({x for x in items if items.count(x) > 1})
            if duplicated:
                raise AsrtuneError(f"sweep: {kind} {', '.join(duplicated)} given twice")
        self._check_composites()
        for key in ("model", "strategy", "seed"):
            if key in self.run:
                raise AsrtuneError(f"sweep: run.{key} is set by the grid itself")

    def _check_composites(self) -> None:
        """Chained and joint datasets name plain datasets listed before them (stage 1 runs first)."""
        seen: dict[str, DatasetSpec] = {}
        for dataset in self.datasets:
            for role, name in [("target", dataset.target), ("first", dataset.first)] + [
                    ("joint", n) for n in dataset.joint]:
                if not name:
                    continue
                if name not in seen or seen[name].composite:
                    raise AsrtuneError(f"sweep dataset {dataset.name}: {role} {name!r} must be a plain dataset "
                                       "listed before it")
            if dataset.target and dataset.target in (dataset.first, *dataset.joint):
                raise AsrtuneError(f"sweep dataset {dataset.name}: {dataset.target} is the target already")
            seen[dataset.name] = dataset


_KNOWN = {"model", "strategies", "datasets", "general", "seeds", "run", "cka"}


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise AsrtuneError(f"sweep {where}: expected a mapping, got {value!r}")
    return value


def _fields(cls: type, values: dict, where: str) -> dict:
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise AsrtuneError(
            f"sweep {where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    return values


def _strategy(value: Any, index: int) -> StrategyEntry:
    if isinstance(value, str):
        return StrategyEntry(spec=value)
    values = dict(
        _fields(
            StrategyEntry,
            {
                ("overrides" if k == "set" else k): v
                for k, v in _mapping(value, f"strategies[{index}]").items()
            },
            f"strategies[{index}]",
        )
    )
    overrides = values.pop("overrides", None) or {}
    return StrategyEntry(**values, overrides=tuple(_mapping(overrides, f"strategies[{index}].set").items()))


def _path(value: str, base: Path) -> str:
    if not value:
        return ""
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _dataset(value: Any, where: str, base: Path) -> DatasetSpec:
    values = dict(_fields(DatasetSpec, _mapping(value, where), where))
    if isinstance(values.get("split"), dict):
        values["split"] = SplitSizes(**_fields(SplitSizes, values["split"], f"{where}.split"))
    for key in ("train", "eval", "test", "manifest"):
        values[key] = _path(values.get(key, ""), base)
    if "joint" in values:
        joint = values["joint"]
        values["joint"] = tuple([joint] if isinstance(joint, str) else joint or ())
    try:
        return DatasetSpec(**values)
    except TypeError as error:
        raise AsrtuneError(f"sweep {where}: {error}") from error


def sweep_from_dict(values: dict, base_dir: Path = Path(".")) -> SweepConfig:
    """Build a :class:`SweepConfig` from plain data (relative paths against ``base_dir``)."""
    unknown = sorted(set(values) - _KNOWN)
    if unknown:
        raise AsrtuneError(
            f"sweep grid: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_KNOWN))})"
        )
    cka = values.get("cka", {})
    cka = (
        CKASettings(enabled=False)
        if cka is False
        else CKASettings(**_fields(CKASettings, _mapping(cka, "cka"), "cka"))
    )
    model = values.get("model", "bundled:tiny.en")
    local = Path(model).expanduser()
    if not model.startswith("bundled:") and not local.is_absolute() and (base_dir / local).exists():
        model = str((base_dir / local).resolve())
    seeds = values.get("seeds", [0])
    return SweepConfig(
        model=model,
        strategies=tuple(_strategy(v, i) for i, v in enumerate(values.get("strategies") or [])),
        datasets=tuple(
            _dataset(v, f"datasets[{i}]", base_dir) for i, v in enumerate(values.get("datasets") or [])
        ),
        general=tuple(
            _dataset(v, f"general[{i}]", base_dir) for i, v in enumerate(values.get("general") or [])
        ),
        seeds=tuple(int(s) for s in (seeds if isinstance(seeds, list) else [seeds])),
        run=dict(_mapping(values.get("run") or {}, "run")),
        cka=cka,
        base_dir=base_dir,
    )


def load_sweep(path: str | Path) -> SweepConfig:
    """Read a sweep grid YAML."""
    path = Path(path)
    if not path.is_file():
        raise AsrtuneError(f"sweep grid not found: {path}")
    try:
        values = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise AsrtuneError(f"{path}: not valid YAML ({error})") from error
    return sweep_from_dict(_mapping(values, "grid"), path.resolve().parent)
