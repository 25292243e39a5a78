"""Run configuration: frozen dataclasses with complete defaults, read from and written to YAML.

Unknown keys are errors; ``--set section.key=value`` overrides are parsed as YAML scalars; relative
data paths are resolved against the YAML file's folder; the resolved config is what a run records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from asrtune.data.augment import AUGMENTATIONS, parse_augment
from asrtune.decodings import DECODINGS
from asrtune.errors import AsrtuneError
from asrtune.evaluation.terms import packaged_term_lists, read_terms
from asrtune.languages import canonical_language, is_known_language, parse_new_language
from asrtune.strategies import STRATEGIES, parse_spec

MIXED_PRECISION_CHOICES = ("auto", "no", "fp16", "bf16")  # auto: asrtune.training.precision
OPTIMIZER_CHOICES = ("adamw", "adafactor", "adamw_8bit", "paged_adamw_8bit")  # asrtune.training.optimizers
QUANTIZATION_CHOICES = ("4bit", "8bit")  # bitsandbytes, through transformers' BitsAndBytesConfig
PARALLEL_CHOICES = ("ddp", "fsdp")  # several processes: replicate the model, or shard it (FSDP2)

__all__ = ["GeneralSet", "DataConfig", "OptimConfig", "LoopConfig", "RunConfig", "load_config", "apply_overrides",
           "config_to_dict", "config_from_dict", "save_config", "config_hash", "parse_yaml", "absolute_model"]


class _Yaml12Loader(yaml.SafeLoader):
    """YAML with 1.2 booleans: only true/false are booleans, so ``no`` (Norwegian; mixed_precision) stays text."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def parse_yaml(text: str) -> Any:
    """Parse YAML text with 1.2 booleans."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True, kw_only=True)
class GeneralSet:
    name: str = _help("name of the set in results and reports", "")
    manifest: str = _help("manifest of general speech whose WER must not rise much (forgetting)", "")

    def __post_init__(self) -> None:
        if not self.name or not self.manifest:
            raise AsrtuneError("data.general: every set needs a name and a manifest")
        if self.name in ("eval", "test", "nonspeech"):
            raise AsrtuneError(f"data.general: {self.name!r} is a reserved set name")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    train: str = _help("training manifest (JSONL: audio, text, optional language, id)", "")
    eval: str = _help("held-out manifest scored by WER during training", "")
    eval_limit: int | None = _help("score a seeded random subset of this many eval rows during training; the "
                                   "final score uses all (None: all)", None)
    test: str = _help("held-out target manifest scored before and after training, never used to choose the "
                      "checkpoint ('': none)", "")
    general: tuple[GeneralSet, ...] = _help("named general sets ({name, manifest}) scored for forgetting; "
                                            "with any, the kept checkpoint respects loop.forgetting_budget",
                                            ())
    augment: str = _help("training-time augmentation spec, e.g. speed+noise:min_snr_db=5+gain+specaugment "
                         "('': none; see asrtune.data.augment)", "")
    duration_buckets: int = _help("draw each training batch from one of this many duration buckets "
                                  "(1: one shuffled pool)", 1)
    feature_cache: bool = _help("keep log-mel features on disk under the asrtune cache, keyed by audio content "
                                "and extractor settings", True)
    terms: str = _help("term list (one term or phrase a line, or packaged:medical_terms_en): term recall and "
                       "term insertions of every set, before and after, in results.json ('': none)", "")
    timestamps: bool | float = _help("train with Whisper's timestamp tokens where a training row has segments "
                                     "(manifest 'segments': aligned pieces, subtitle cues, Kaldi segments, NeMo "
                                     "offsets): true, or the share of batches (0.5) that do; <|notimestamps|> "
                                     "elsewhere. Evaluation still decodes without timestamps", False)

    def __post_init__(self) -> None:
        if self.eval_limit is not None and self.eval_limit < 1:
            raise AsrtuneError("data.eval_limit must be >= 1 or null")
        if self.duration_buckets < 1:
            raise AsrtuneError("data.duration_buckets must be >= 1")
        if not isinstance(self.timestamps, bool) and not 0 <= self.timestamps <= 1:
            raise AsrtuneError("data.timestamps must be true, false or a share of batches between 0 and 1")
        names = [g.name for g in self.general]
        if len(set(names)) != len(names):
            raise AsrtuneError(f"data.general: set names must be unique, got {names}")
        # a bad spec is an error when the config is read, not at step 1 or after training
        _checked("data.augment", self.augment, parse_augment,
                 f"NAME[:KEY=VALUE,...] joined by '+', NAME one of {', '.join(AUGMENTATIONS.names())} "
                 "(e.g. speed+noise:min_snr_db=5+specaugment), or '' for none")
        _checked("data.terms", self.terms, read_terms,
                 "a UTF-8 file with one term or phrase a line, or packaged:NAME "
                 f"({', '.join(packaged_term_lists())}), or '' for none")

    @property
    def timestamp_share(self) -> float:
        """The share of training batches whose rows with segments get timestamp tokens."""
        return float(self.timestamps)

    def manifests(self) -> dict[str, str]:
        """Every manifest the run reads, by role: train, eval, test and each general set's name."""
        named = {"train": self.train, "eval": self.eval, "test": self.test}
        named.update({f"general:{g.name}": g.manifest for g in self.general})
        return {role: path for role, path in named.items() if path}


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    name: str = _help("optimizer: adamw (PyTorch's fused AdamW, 8 bytes of state a parameter), adafactor "
                      "(PyTorch's: factored second moments, no first moment: a matrix keeps a row and a "
                      "column), adamw_8bit (bitsandbytes, 2 bytes a parameter), paged_adamw_8bit "
                      "(bitsandbytes, state paged out of GPU memory: CUDA only)",
                      "adamw")
    learning_rate: float | None = _help("peak learning rate; null takes the strategy's default", None)
    weight_decay: float = _help("AdamW weight decay", 0.0)
    betas: tuple[float, float] = _help("AdamW betas", (0.9, 0.999))
    eps: float = _help("AdamW epsilon", 1e-8)
    encoder_learning_rate: float | None = _help("the (audio) encoder's own peak LR (null: learning_rate)", None)
    projector_learning_rate: float | None = _help("LLM families: the audio-to-text projector's own peak LR "
                                                  "(null: learning_rate, which the LLM's group takes)", None)
    learning_rate_source: str | None = _help("where the learning rate came from (set by lr-search)", None)
    max_grad_norm: float | None = _help("clip the gradient norm to this (null: no clipping)", 1.0)

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZER_CHOICES:
            raise AsrtuneError(f"optim.name {self.name!r}: allowed: {', '.join(OPTIMIZER_CHOICES)}")
        for name in ("learning_rate", "encoder_learning_rate", "projector_learning_rate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise AsrtuneError(f"optim.{name} must be > 0")
        if self.weight_decay < 0:
            raise AsrtuneError("optim.weight_decay must be >= 0")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise AsrtuneError("optim.max_grad_norm must be > 0 or null")


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    max_steps: int = _help("optimizer steps to train", 200)
    batch_size: int = _help("utterances per forward pass, per process (the global batch is batch_size x "
                            "processes x grad_accum_steps)", 8)
    max_batch_seconds: float | None = _help("instead of batch_size: pack each process's forward pass up to this "
                                            "many seconds of audio (null: fixed batch_size)", None)
    num_workers: int | None = _help("DataLoader worker processes reading features (null: from the CPU count, "
                                    "shared among local processes)", None)
    grad_accum_steps: int = _help("forward passes per optimizer step", 1)
    warmup_ratio: float = _help("share of max_steps spent warming the learning rate up linearly", 0.1)
    eval_every: int = _help("score WER on the eval set every this many optimizer steps", 50)
    patience: int | None = _help("stop after this many evaluations without a better WER (null: never)", None)
    eval_batch_size: int = _help("utterances per batch when decoding", 16)
    max_new_tokens: int = _help("longest hypothesis decoded, in tokens", 128)
    decoding: str = _help("how evaluations decode: greedy (the repetition guard stops loops) or deploy "
                          "(faster-whisper's transcribe defaults: 5 beams, temperature fallback; Whisper only); "
                          "the base model is decoded the same way", "greedy")
    log_every: int = _help("write training loss to TensorBoard every this many steps", 5)
    save_every: int | None = _help("also write checkpoints/last every this many steps (null: at each "
                                   "evaluation)", None)
    max_nonfinite_steps: int = _help("stop the run after this many consecutive steps with a non-finite loss or "
                                     "gradient (each is skipped: no update)", 5)
    gradient_checkpointing: bool = _help("recompute each transformer layer's activations in the backward "
                                         "pass instead of keeping them (non-reentrant; less memory, ~1/3 "
                                         "more compute; the same losses)", False)
    parallel: str = _help("several processes: ddp (every process holds the whole model) or fsdp (parameters, "
                          "gradients and optimizer state sharded across processes, FSDP2, one unit per "
                          "transformer layer; launch with torchrun)", "ddp")
    mixed_precision: str = _help("training arithmetic: auto (bf16 where the hardware multiplies bf16 natively: "
                                 "CUDA bf16, CPU AMX; else fp32), no, fp16 or bf16", "auto")
    encoder_cache_mb: int = _help("when the encoder is frozen, cache its outputs up to this many MB", 4096)
    short_input: bool = _help("train with the encoder input cut to the batch's longest utterance instead of "
                              "30 s (faster; evaluation keeps 30 s; README: what it costs)", False)
    forgetting_budget: float = _help("with data.general sets, keep only checkpoints whose general WER rose "
                                     "by at most this much over the base model's (see forgetting_measure)",
                                     0.03)
    forgetting_measure: str = _help("absolute: the budget is WER points (0.03 = 3 points); relative: a share of "
                                    "the base model's WER on each general set (0.10 = at most 10% worse)",
                                    "absolute")
    schedule: str = _help("after warm-up: linear (decay to 0 at max_steps) or constant", "linear")
    eval_at_start: bool = _help("score the untouched model at step 0 (the checkpoint to beat)", True)
    plateau_factor: float | None = _help("multiply the LR by this when eval WER stalls or worsens (null: off)", None)
    plateau_patience: int = _help("evaluations without a better WER before the LR is reduced", 1)
    min_learning_rate: float = _help("WER-driven reductions stop at this LR", 1e-7)
    interpolation: tuple[float, ...] = _help(
        "after training, also score start + a x (end - start) of the trained weights for each a here "
        "(WiSE-FT weight interpolation), each offered to checkpoint selection like a checkpoint: "
        "e.g. [0.5, 0.75] trades some domain gain for less forgetting ([]: off)", ())
    ctc_weight: float = _help("LLM families: add this times the CTC loss of the projected audio against the "
                              "LLM's embeddings to the cross-entropy (0: none; alignment, README)", 0.0)
    ctc_only: bool = _help("LLM families: train with the CTC loss alone, the LLM not run, and choose the "
                           "checkpoint by greedy CTC decoding (an alignment stage)", False)
    ctc_negatives: int = _help("rows of the embedding matrix the CTC loss scores besides the training "
                               "transcripts' tokens, drawn once from the seed", 1024)

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum_steps", "eval_every", "eval_batch_size",
                     "max_new_tokens", "log_every", "max_nonfinite_steps"):
            if getattr(self, name) < 1:
                raise AsrtuneError(f"loop.{name} must be >= 1")
        if not 0 <= self.warmup_ratio < 1:
            raise AsrtuneError("loop.warmup_ratio must be in [0, 1)")
        if self.max_batch_seconds is not None and not self.max_batch_seconds > 0:
            raise AsrtuneError("loop.max_batch_seconds must be > 0 or null")
        if self.num_workers is not None and self.num_workers < 0:
            raise AsrtuneError("loop.num_workers must be >= 0 or null")
        if self.save_every is not None and self.save_every < 1:
            raise AsrtuneError("loop.save_every must be >= 1 or null")
        if self.patience is not None and self.patience < 1:
            raise AsrtuneError("loop.patience must be >= 1 or null")
        if self.schedule not in ("linear", "constant"):
            raise AsrtuneError("loop.schedule must be linear or constant")
        if self.decoding not in DECODINGS:
            raise AsrtuneError(f"loop.decoding must be one of {', '.join(DECODINGS)}, not {self.decoding!r}")
        if self.plateau_factor is not None and not 0 < self.plateau_factor < 1:
            raise AsrtuneError("loop.plateau_factor must be in (0, 1) or null")
        if self.plateau_patience < 1:
            raise AsrtuneError("loop.plateau_patience must be >= 1")
        if self.parallel not in PARALLEL_CHOICES:
            raise AsrtuneError(f"loop.parallel must be one of {', '.join(PARALLEL_CHOICES)}")
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise AsrtuneError(f"loop.mixed_precision must be one of {', '.join(MIXED_PRECISION_CHOICES)}")
        if not self.forgetting_budget >= 0:
            raise AsrtuneError("loop.forgetting_budget must be >= 0")
        if self.forgetting_measure not in ("absolute", "relative"):
            raise AsrtuneError("loop.forgetting_measure must be absolute or relative")
        if not self.ctc_weight >= 0 or self.ctc_negatives < 0:
            raise AsrtuneError("loop.ctc_weight and loop.ctc_negatives must be >= 0")
        if self.interpolation and self.parallel == "fsdp":
            raise AsrtuneError("loop.interpolation needs whole weights in one process: use "
                               "loop.parallel: ddp")
        if not all(0 < a < 1 for a in self.interpolation):
            raise AsrtuneError("loop.interpolation: each weight must be in (0, 1) (0 is the start, 1 the end of "
                               "training, both scored already)")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One fine-tuning run: the model, the strategy, the data and how to train (YAML in and out).

    Build it from YAML with :func:`load_config`, from plain data with :func:`config_from_dict`, or directly;
    every field has a default and is checked when the config is made (a bad strategy, augmentation,
    language or term list is an error here, before any model loads). Each field's ``help`` metadata says
    what it means.
    """

    model: str = _help("HF id or folder, CTranslate2 folder, or bundled:tiny.en / bundled:base", "bundled:tiny.en")
    strategy: str = _help("fine-tuning strategy spec, e.g. full, lora:r=32,alpha=64", "lora:r=32,alpha=64")
    init_from: str = _help("another run's folder: start from its kept checkpoint (its strategy merged into the "
                           "weights, or kept as modules where it cannot merge), then apply this run's strategy "
                           "on top ('': start from model)", "")
    language: str | None = _help("language code for multilingual models (null: English); new:xx,init=yy adds "
                                 "<|xx|> as a new language token initialised from yy's", None)
    language_init: str | None = _help("the related language a new language token was initialised from "
                                      "(set by language: new:xx,init=yy; null: language is one the model has)",
                                      None)
    task: str = _help("transcribe or translate", "transcribe")
    quantization: str | None = _help("load the frozen base's nn.Linear layers in 4bit (NF4, double "
                                     "quantization) or 8bit (LLM.int8) through bitsandbytes (QLoRA); only for "
                                     "strategies that train additions or the projector (lora, adapter, "
                                     "prompt, projector); the audio encoder's convolutions and the projector "
                                     "stay unquantized (null: off)", None)
    seed: int = _help("seed for weights, data order and augmentation", 0)
    data: DataConfig = _help("data", factory=DataConfig)
    optim: OptimConfig = _help("optimizer", factory=OptimConfig)
    loop: LoopConfig = _help("training loop", factory=LoopConfig)

    def __post_init__(self) -> None:
        _checked("strategy", self.strategy, parse_spec,
                 f"NAME[:KEY=VALUE,...] joined by '+', NAME one of {', '.join(STRATEGIES.names())} "
                 "(e.g. full, freeze:n=2, lora:r=32,alpha=64, freeze:n=2+lora:r=8)")
        new = _checked("language", self.language, parse_new_language, _LANGUAGE_FORMS) if self.language else None
        if new:
            object.__setattr__(self, "language", new[0])
            object.__setattr__(self, "language_init", new[1])
        else:
            object.__setattr__(self, "language", canonical_language(self.language))  # en-US, English -> en
            if self.language is not None and self.language_init is None and not is_known_language(self.language):
                raise AsrtuneError(f"language {self.language!r}: no model family knows it; "
                                   f"allowed: {_LANGUAGE_FORMS}")
        if self.language_init is not None:
            if not self.language:
                raise AsrtuneError("language_init needs a language (write language: new:xx,init=yy)")
            object.__setattr__(self, "language_init", canonical_language(self.language_init))
            if self.language_init == self.language:
                raise AsrtuneError(f"language new:{self.language}: init must be another language")
        if self.task not in ("transcribe", "translate"):
            raise AsrtuneError("task must be transcribe or translate")
        if self.quantization is not None:
            _check_quantization(self.quantization, self.strategy)


def _check_quantization(quantization: str, strategy: str) -> None:
    """A quantized base trains only what sits beside its frozen weights: additions, or the projector."""
    if quantization not in QUANTIZATION_CHOICES:
        raise AsrtuneError(f"quantization {quantization!r}: allowed: {', '.join(QUANTIZATION_CHOICES)} "
                           "or null")
    parts = parse_spec(strategy)
    if not any(part.kind == "add" or part.name == "projector" for part in parts):
        raise AsrtuneError(f"quantization {quantization}: strategy {strategy!r} trains pretrained weights, "
                           "which a quantized base cannot update; use lora, adapter, prompt or projector "
                           "(e.g. lora:r=8,alpha=32), or quantization: null")


_LANGUAGE_FORMS = ("a language code or name Whisper knows (en, sw, pt-BR, English), or "
                   "new:CODE,init=RELATED for a language the model lacks (e.g. new:ky,init=kk)")


def _checked(key: str, value: str, check, forms: str):
    """``check(value)`` for a spec string; its error names the key, the value and the allowed forms."""
    if not value:
        return None
    try:
        return check(value)
    except AsrtuneError as error:
        raise AsrtuneError(f"{key} {value!r}: {error}; allowed: {forms}") from None


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a type hint, building nested dataclasses from mappings."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise AsrtuneError(f"{where}: expected a mapping, got {value!r}")
        return _build(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except AsrtuneError as error:
                errors.append(str(error))
        raise AsrtuneError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple and typing.get_args(hint)[1:] == (Ellipsis,):  # tuple[X, ...]: any length
        if not isinstance(value, (list, tuple)):
            raise AsrtuneError(f"{where}: expected a list, got {value!r}")
        return tuple(_convert(v, typing.get_args(hint)[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(typing.get_args(hint)):
            raise AsrtuneError(f"{where}: expected a list of {len(typing.get_args(hint))}, got {value!r}")
        return tuple(_convert(v, h, where) for v, h in zip(value, typing.get_args(hint)))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-5 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(hint, type) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise AsrtuneError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _build(cls: type, values: dict, where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise AsrtuneError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)} "
                           f"(known: {', '.join(sorted(names))})")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def config_from_dict(values: dict) -> RunConfig:
    """Build and validate a :class:`RunConfig` from plain data."""
    return _build(RunConfig, values)


def config_to_dict(config: Any) -> dict:
    """Plain, YAML-ready data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def absolute_model(model: str, base: Path) -> str:
    """A model source that names an existing local path, made absolute (a run must load from anywhere)."""
    if model.startswith("bundled:"):
        return model
    local = Path(model).expanduser()
    local = local if local.is_absolute() else base / local
    return str(local.resolve()) if local.exists() else model


def _resolve_paths(values: dict, base: Path) -> dict:
    if isinstance(values.get("model"), str):
        values = {**values, "model": absolute_model(values["model"], base)}
    if isinstance(values.get("init_from"), str) and values["init_from"]:
        path = Path(values["init_from"]).expanduser()
        values = {**values, "init_from": str(path if path.is_absolute() else (base / path).resolve())}
    data = dict(values.get("data") or {})
    for key in ("train", "eval", "test", "terms"):
        if data.get(key) and not (key == "terms" and str(data[key]).startswith("packaged:")):
            path = Path(data[key]).expanduser()
            data[key] = str(path if path.is_absolute() else (base / path).resolve())
    if isinstance(data.get("general"), dict):  # {name: manifest} is shorthand for [{name, manifest}, ...]
        data["general"] = [{"name": k, "manifest": v} for k, v in data["general"].items()]
    if isinstance(data.get("general"), list):
        data["general"] = [{**g, "manifest": str((base / Path(g["manifest"]).expanduser()).resolve())}
                           if isinstance(g, dict) and isinstance(g.get("manifest"), str) and g["manifest"]
                           else g
                           for g in data["general"]]
    return {**values, "data": data} if data else values


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to nested plain data."""
    result = json.loads(json.dumps(values))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise AsrtuneError(f"--set expects key=value, got {item!r}")
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise AsrtuneError(f"--set {key}: {part} is not a section")
        node[leaf] = parse_yaml(raw) if raw else ""
    return result


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config (or defaults when ``path`` is None), then apply ``--set`` overrides."""
    values: dict = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise AsrtuneError(f"config file not found: {path}")
        try:
            values = parse_yaml(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise AsrtuneError(f"{path}: not valid YAML ({error})") from error
        if not isinstance(values, dict):
            raise AsrtuneError(f"{path}: expected a mapping at the top level")
        base = path.resolve().parent
    values = _resolve_paths(values, base)
    values = apply_overrides(values, list(overrides))
    values = _resolve_paths(values, Path.cwd())
    return config_from_dict(values)


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def config_hash(config: RunConfig) -> str:
    """Short stable hash of the resolved config, recorded in results.json."""
    blob = json.dumps(config_to_dict(config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
