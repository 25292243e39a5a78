"""What ``asrtune explore`` reads: run folders, saved evaluations and sweep folders, as sets of utterances.

Each input becomes one or more :class:`SetSource` (one set scored by one model, or by a model before
and after fine-tuning):

* a run folder (``asrtune train``): every set in ``evaluation/<set>.jsonl`` (eval, test, the general
  sets, non-speech), with the base model's and the kept model's transcripts; audio and manifest fields
  come from the manifests ``config.yaml`` names (non-speech clips from the run's ``nonspeech/``);
* one set of a run: ``RUN/evaluation/<set>.jsonl``;
* saved evaluations (``asrtune evaluate MODEL --data M --save FILE``): grouped by manifest, in the
  order given; one file of a manifest is a single model, two are before and after;
* a sweep folder (``asrtune sweep``): every run under ``runs/`` (``pick`` globs choose some).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

from asrtune.config import parse_yaml
from asrtune.errors import AsrtuneError
from asrtune.evaluation.terms import TermList, read_terms

__all__ = ["SAVED_FORMAT", "SetSource", "read_sources", "resolve_manifest", "save_evaluation", "sweep_runs"]

SAVED_FORMAT = "asrtune-evaluation"  # the "format" of `asrtune evaluate --save` files
_SET_ORDER = ("eval", "test")  # then general sets, then non-speech, as the run reports them


@dataclass(frozen=True, kw_only=True)
class SetSource:
    """One set's transcripts, by one model (``after``) or two (``before``, ``after``).

    Attributes:
        source: the run folder or saved evaluation it came from, as given (a sweep run: its cell path).
        name: the set's name (``test``, a general set's name, ``nonspeech``; a manifest's name).
        role: ``target``, ``general`` or ``nonspeech`` (what the run scored it for).
        language: the language the set is scored in (None: English; ``multi``: mixed), as the run scored it.
        ids, references, after: (N,) utterance ids, references, the tuned (or only) model's hypotheses.
        before: (N,) the base model's hypotheses, or None.
        before_label, after_label: what produced each.
        manifest: where audio paths and manifest fields are read (None: unknown).
        nonspeech_dir: a run's generated non-speech clips (the ``nonspeech`` set only).
        truncated: model (``before``/``after``) -> ids whose hypothesis stopped at ``max_new_tokens``.
        truncation_known: the models whose truncated ids are all known (a run keeps the kept model's on
            the eval set, up to 20 ids).
        terms: the term list the set was scored with (None: none).
    """

    source: str
    name: str
    role: str
    language: str | None
    ids: tuple[str, ...]
    references: tuple[str, ...]
    after: tuple[str, ...]
    before: tuple[str, ...] | None
    before_label: str | None
    after_label: str
    manifest: Path | None = None
    nonspeech_dir: Path | None = None
    truncated: dict[str, frozenset[str]] = field(default_factory=dict)
    truncation_known: tuple[str, ...] = ()
    terms: TermList | None = None

    @property
    def key(self) -> str:
        return f"{self.source} · {self.name}"


def resolve_manifest(path: str, near: Path) -> Path | None:
    """A manifest path from a run config: absolute, or relative to the working folder the run was started
    from, which is the current one or a folder above ``near`` (the run folder). None when not found."""
    given = Path(path).expanduser()
    if given.is_absolute():
        return given if given.is_file() else None
    for base in (Path.cwd(), *near.resolve().parents):
        if (base / given).is_file():
            return (base / given).resolve()
    return None


def _jsonl(path: Path) -> list[dict]:
    rows = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise AsrtuneError(f"{path}:{line_number}: not valid JSON ({error.msg})") from error
        missing = [k for k in ("id", "reference", "hypothesis") if not isinstance(row, dict) or k not in row]
        if missing:
            raise AsrtuneError(
                f"{path}:{line_number}: missing {', '.join(missing)} (not an evaluation/<set>.jsonl "
                "written by asrtune train)"
            )
        rows.append(row)
    if not rows:
        raise AsrtuneError(f"{path}: no utterances")
    return rows


def _unique(ids: list[str], where: str) -> None:
    seen, repeated = set(), []
    for utt_id in ids:
        if utt_id in seen:
            repeated.append(utt_id)
        seen.add(utt_id)
    if repeated:
        raise AsrtuneError(
            f"{where}: utterance ids repeat ({', '.join(repeated[:5])}): each row needs its own id"
        )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AsrtuneError(f"{path}: cannot read it as JSON ({error})") from error
    if not isinstance(data, dict):
        raise AsrtuneError(f"{path}: expected a JSON object")
    return data


def _language_of(manifest: Path | None, default: str | None) -> str | None:
    """The scoring language of a set, as :func:`asrtune.evaluation.decode.scoring_language` decides it."""
    if manifest is None:
        return default
    languages = set()
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                languages.add(json.loads(line).get("language") or default)
            except (json.JSONDecodeError, AttributeError):
                return default
    return languages.pop() if len(languages) == 1 else "multi"


def _terms(spec: str | None, language: str | None, warnings: list[str], where: str) -> TermList | None:
    if not spec:
        return None
    try:
        return read_terms(spec, language)
    except AsrtuneError as error:
        warnings.append(f"{where}: terms not shown ({error})")
        return None


def _run_label(results: dict, run: Path) -> str:
    kept = results.get("best_step")
    text = f"{results.get('strategy') or 'tuned'}"
    if kept is not None:
        text += f", step {kept}"
    if results.get("best_interpolation") is not None:
        text += f" x {results['best_interpolation']:g}"
    return f"{run.name} ({text})"


def _role(name: str, general: list) -> str:
    """A set's role when ``results.json`` does not say (as :mod:`asrtune.training.evidence` names them)."""
    if name == "nonspeech":
        return "nonspeech"
    return "general" if name in {g.get("name") for g in general if isinstance(g, dict)} else "target"


def _truncation(name: str, final: dict) -> tuple[dict[str, frozenset[str]], tuple[str, ...]]:
    """Which hypotheses hit ``max_new_tokens``, as far as a run records it: its kept model's on the eval set
    (``results.json`` ``final``, the first 20 ids); complete when no more than those were cut."""
    if name != "eval" or "hit_max_new_tokens_ids" not in final:
        return {}, ()
    ids = final["hit_max_new_tokens_ids"]
    return {"after": frozenset(ids)}, ("after",) if final.get("hit_max_new_tokens", 0) <= len(ids) else ()


def _run_sets(run: Path, label: str, only: set[str] | None, warnings: list[str]) -> list[SetSource]:
    folder = run / "evaluation"
    if not folder.is_dir():
        raise AsrtuneError(
            f"{run}: no evaluation/ folder; a run writes evaluation/<set>.jsonl when its final "
            "evaluation ends (an unfinished run has none)"
        )
    config = (
        parse_yaml((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else None
    ) or {}
    results = _read_json(run / "results.json") if (run / "results.json").is_file() else {}
    data = config.get("data") or {}
    recorded = (results.get("evaluation") or {}).get("sets") or {}
    manifests = {"eval": data.get("eval"), "test": data.get("test")}
    general = data.get("general") or []
    manifests.update({g["name"]: g["manifest"] for g in general if isinstance(g, dict) and "name" in g})
    files = {p.stem: p for p in folder.glob("*.jsonl")}
    names = [n for n in recorded if n in files] + sorted(set(files) - set(recorded), key=_set_rank)
    if only:
        names = [n for n in names if n in only]
    sets = []
    for name in names:
        rows = _jsonl(files[name])
        ids = [str(r["id"]) for r in rows]
        _unique(ids, str(files[name]))
        manifest = resolve_manifest(manifests[name], run) if manifests.get(name) else None
        if manifests.get(name) and manifest is None:
            warnings.append(f"{label} · {name}: manifest {manifests[name]} not found: no audio (give --data)")
        role = (recorded.get(name) or {}).get("role") or _role(name, general)
        before = [r.get("base") for r in rows]
        language = _language_of(manifest, config.get("language"))
        truncated, known = _truncation(name, results.get("final") or {})
        sets.append(
            SetSource(
                source=label,
                name=name,
                role=role,
                language=language,
                ids=tuple(ids),
                references=tuple(str(r["reference"]) for r in rows),
                after=tuple(str(r["hypothesis"]) for r in rows),
                before=None if any(b is None for b in before) else tuple(str(b) for b in before),
                before_label=str(results.get("base_model") or config.get("model") or "base model"),
                after_label=_run_label(results, run),
                manifest=manifest,
                nonspeech_dir=run / "nonspeech" if role == "nonspeech" else None,
                truncated=truncated,
                truncation_known=known,
                terms=None if role == "nonspeech" else _terms(data.get("terms"), language, warnings, label),
            )
        )
    if not sets:
        raise AsrtuneError(
            f"{run}: no set to show" + (f" (asked for {', '.join(sorted(only))})" if only else "")
        )
    return sets


def _set_rank(name: str) -> tuple[int, str]:
    return (_SET_ORDER.index(name) if name in _SET_ORDER else 3 if name == "nonspeech" else 2, name)


def sweep_runs(sweep: Path) -> dict[str, Path]:
    """A sweep's finished runs by cell (``dataset/strategy/seed-k``); runs set aside as stale are left out."""
    runs = sweep / "runs"
    found = {}
    for evaluation in sorted(runs.rglob("evaluation")):
        run = evaluation.parent
        cell = run.relative_to(runs).as_posix()
        if evaluation.is_dir() and (run / "config.yaml").is_file() and ".stale-" not in cell:
            found[cell] = run
    return found


def _sweep_sets(
    sweep: Path, picks: tuple[str, ...], only: set[str] | None, warnings: list[str]
) -> list[SetSource]:
    runs = sweep_runs(sweep)
    if not runs:
        raise AsrtuneError(f"{sweep}: a sweep folder with no finished run under runs/")
    chosen = [cell for cell in runs if not picks or any(fnmatch.fnmatch(cell, p) for p in picks)]
    if not chosen:
        raise AsrtuneError(
            f"--pick {' '.join(picks)} matches none of {sweep}'s runs: {', '.join(list(runs)[:20])}"
        )
    return [s for cell in chosen for s in _run_sets(runs[cell], cell, only, warnings)]


def _saved(path: Path) -> dict | None:
    """A saved evaluation's content, or None when the file is not one."""
    if path.suffix != ".json":
        return None
    data = _read_json(path)
    if data.get("format") != SAVED_FORMAT:
        return None
    rows = data.get("utterances")
    if not isinstance(rows, list) or not rows:
        raise AsrtuneError(f"{path}: a saved evaluation with no utterances")
    for number, row in enumerate(rows, start=1):
        missing = [k for k in ("id", "reference", "hypothesis") if not isinstance(row, dict) or k not in row]
        if missing:
            raise AsrtuneError(f"{path}: utterance {number} has no {', '.join(missing)}")
    return data


def _saved_sets(
    saved: list[tuple[Path, dict]], only: set[str] | None, warnings: list[str]
) -> list[SetSource]:
    groups: dict[str, list[tuple[Path, dict]]] = {}
    for path, data in saved:
        groups.setdefault(str(data.get("data")), []).append((path, data))
    sets = []
    for data_path, group in groups.items():
        if len(group) > 2:
            raise AsrtuneError(
                f"{len(group)} saved evaluations of {data_path} ({', '.join(str(p) for p, _ in group)}): "
                "give one (a model alone) or two (before, then after)"
            )
        rows = [d["utterances"] for _, d in group]
        ids = [str(r["id"]) for r in rows[-1]]
        _unique(ids, str(group[-1][0]))
        if len(group) == 2 and [(str(r["id"]), r["reference"]) for r in rows[0]] != [
            (str(r["id"]), r["reference"]) for r in rows[1]
        ]:
            raise AsrtuneError(f"{group[0][0]} and {group[1][0]} hold different utterances of {data_path}")
        manifest = Path(data_path)
        if not manifest.is_file():
            warnings.append(f"{data_path}: manifest not found: no audio (give --data)")
        name = manifest.parent.name if manifest.stem == "manifest" else manifest.stem
        if only and name not in only:
            continue
        last = group[-1][1]
        language = last.get("scoring_language")
        truncated = {
            m: frozenset(str(r["id"]) for r in rs if r.get("truncated"))
            for m, rs in zip(("before", "after")[-len(rows) :], rows, strict=True)
        }
        sets.append(
            SetSource(
                source=str(group[-1][0]),
                name=name,
                role="target",
                language=language,
                ids=tuple(ids),
                references=tuple(str(r["reference"]) for r in rows[-1]),
                after=tuple(str(r["hypothesis"]) for r in rows[-1]),
                before=tuple(str(r["hypothesis"]) for r in rows[0]) if len(rows) == 2 else None,
                before_label=str(group[0][1].get("model")) if len(rows) == 2 else None,
                after_label=str(last.get("model")),
                manifest=manifest if manifest.is_file() else None,
                truncated=truncated,
                truncation_known=tuple(truncated),
                terms=_terms(last.get("term_list"), language, warnings, str(group[-1][0])),
            )
        )
    return sets


def save_evaluation(path: Path, record: dict, predictions: list[dict], *, data: Path | str,
                    terms: str | None) -> None:
    """Write a saved evaluation (``asrtune evaluate --save``, format :data:`SAVED_FORMAT`, which
    :func:`read_sources` reads): the record, the manifest (absolute), and each utterance's id, reference,
    hypothesis and whether it stopped at ``max_new_tokens``.

    Raises:
        AsrtuneError: the file cannot be written.
    """
    saved = {"format": SAVED_FORMAT, "version": 1, **record, "data": str(Path(data).resolve()),
             "term_list": terms, "utterances": predictions}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(saved, ensure_ascii=False, indent=1), encoding="utf-8")
    except OSError as error:
        raise AsrtuneError(f"cannot write {path}: {error.strerror or error}") from error


def read_sources(
    inputs: list[str | Path],
    *,
    picks: tuple[str, ...] = (),
    sets: tuple[str, ...] = (),
    warnings: list[str] | None = None,
) -> list[SetSource]:
    """Every set the inputs hold, in the order given.

    Args:
        inputs: run folders, ``RUN/evaluation/<set>.jsonl`` files, saved evaluations, sweep folders.
        picks: globs over a sweep's cells (``medical/lora*/seed-0``); empty: every run.
        sets: only these set names (empty: all).
        warnings: collects what is shown without audio or terms, and why.

    Raises:
        AsrtuneError: a missing input, a folder that is neither a run nor a sweep, a file that is not a
            saved evaluation, unreadable or inconsistent transcripts, nothing left to show.
    """
    warnings = [] if warnings is None else warnings
    only = set(sets) or None
    found: list[SetSource] = []
    saved: list[tuple[Path, dict]] = []
    for given in inputs:
        path = Path(given).expanduser()
        if not path.exists():
            raise AsrtuneError(f"not found: {path}")
        if path.is_dir() and ((path / "evaluation").is_dir() or (path / "config.yaml").is_file()):
            found += _run_sets(path, str(given), only, warnings)
        elif path.is_dir() and ((path / "sweep.json").is_file() or (path / "runs").is_dir()):
            found += _sweep_sets(path, picks, only, warnings)
        elif path.is_dir():
            raise AsrtuneError(f"{path}: neither a run folder (no evaluation/) nor a sweep folder (no runs/)")
        elif path.suffix == ".jsonl" and path.parent.name == "evaluation":
            found += _run_sets(path.parent.parent, str(path.parent.parent), {path.stem}, warnings)
        elif (data := _saved(path)) is not None:
            saved.append((path, data))
        else:
            raise AsrtuneError(
                f"{path}: not a saved evaluation (asrtune evaluate MODEL --data M --save FILE.json), "
                "a run folder or a sweep folder"
            )
    found += _saved_sets(saved, only, warnings)
    if not found:
        raise AsrtuneError("nothing to show" + (f": no set named {', '.join(sorted(only))}" if only else ""))
    return found
