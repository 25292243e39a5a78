"""The scale core on the tiny random Whisper: two processes train like one, kill -9 and non-finite steps
are survived, and memory does not grow with the corpus."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import read_jsonl, write_tone

from asrtune.config import DataConfig, LoopConfig, OptimConfig, RunConfig, config_to_dict
from asrtune.data.features import FeatureDataset, collate
from asrtune.data.manifest import Utterance, write_manifest
from asrtune.runs.load import load_model
from asrtune.training.faults import NonFiniteLoss
from asrtune.training.parts import RecipeParts
from asrtune.training.recipe import train
from asrtune.training.step import TrainingForward

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _config(model_dir, data, **loop) -> RunConfig:
    train_manifest, eval_manifest = data
    settings = dict(max_steps=6, batch_size=2, eval_every=3, eval_batch_size=4, max_new_tokens=4, log_every=1,
                    warmup_ratio=0.0, num_workers=0, mixed_precision="no")
    settings.update(loop)
    return RunConfig(model=str(model_dir), strategy="full", seed=2,
                     data=DataConfig(train=str(train_manifest), eval=str(eval_manifest)),
                     optim=OptimConfig(learning_rate=1e-3), loop=LoopConfig(**settings))


def _write_config(config: RunConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config_to_dict(config)))
    return path


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    return env


def _asrtune(*args, launcher: list[str] | None = None) -> subprocess.Popen:
    """``asrtune ARGS`` in a subprocess; its output goes to a temporary file (read by :func:`_finish`)."""
    command = [*(launcher or [sys.executable]), "-m", "asrtune", *args]
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(command, env=_env(), stdout=log, stderr=subprocess.STDOUT, text=True)
    process.log = log
    return process


def _finish(process: subprocess.Popen, timeout: float = 300) -> str:
    process.wait(timeout=timeout)
    process.log.seek(0)
    output = process.log.read()
    assert process.returncode == 0, output[-3000:]
    return output


def _step_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


# --- several processes -------------------------------------------------------------------------------------


def test_two_processes_train_exactly_like_one_with_the_global_batch(tiny_model_dir, tiny_data, tmp_path):
    two = _write_config(_config(tiny_model_dir, tiny_data, batch_size=2), tmp_path / "two.yaml")
    one = _write_config(_config(tiny_model_dir, tiny_data, batch_size=4), tmp_path / "one.yaml")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(29500 + os.getpid() % 1000)]
    output = _finish(_asrtune("train", str(two), "--output-dir", str(tmp_path / "ddp"), launcher=torchrun))
    _finish(_asrtune("train", str(one), "--output-dir", str(tmp_path / "single")))

    ddp, single = _step_losses(tmp_path / "ddp"), _step_losses(tmp_path / "single")
    assert [s for s, _ in ddp] == list(range(1, 7))  # each step once: only the main process writes
    assert [loss for _, loss in ddp] == pytest.approx([loss for _, loss in single], rel=1e-5, abs=1e-6)
    assert len({round(loss, 6) for _, loss in ddp}) > 1  # it trained
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["world_size"] == 2 and results["global_batch_size"] == 4
    assert results["final_wer"] == pytest.approx(json.loads((tmp_path / "single/results.json").read_text())
                                                 ["final_wer"])
    assert output.count("final WER (best ckpt)") == 1  # one summary table, printed by the main process
    evals = [r for r in read_jsonl(tmp_path / "ddp" / "metrics.jsonl") if "eval_wer" in r]
    assert [r["step"] for r in evals] == [0, 3, 6]


def _torchrun(processes: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
            str(29500 + (os.getpid() * 7 + processes) % 1000)]


def test_fsdp_on_two_processes_trains_like_one_and_exports_a_consolidated_model(tiny_model_dir, tiny_data,
                                                                                 tmp_path):
    fsdp = _write_config(_config(tiny_model_dir, tiny_data, batch_size=2, parallel="fsdp"), tmp_path / "fsdp.yaml")
    one = _write_config(_config(tiny_model_dir, tiny_data, batch_size=4), tmp_path / "one.yaml")
    _finish(_asrtune("train", str(fsdp), "--output-dir", str(tmp_path / "fsdp"), launcher=_torchrun()))
    _finish(_asrtune("train", str(one), "--output-dir", str(tmp_path / "single")))

    sharded, single = _step_losses(tmp_path / "fsdp"), _step_losses(tmp_path / "single")
    assert [s for s, _ in sharded] == list(range(1, 7))
    assert [loss for _, loss in sharded] == pytest.approx([loss for _, loss in single], rel=5e-3)
    assert len({round(loss, 6) for _, loss in sharded}) > 1
    evals = [r for r in read_jsonl(tmp_path / "fsdp" / "metrics.jsonl") if "eval_wer" in r]
    assert [r["step"] for r in evals] == [0, 3, 6]  # generate ran on both processes, split and gathered
    from safetensors.torch import load_file

    ours = load_file(str(tmp_path / "fsdp" / "checkpoints" / "last" / "trainable.safetensors"))
    theirs = load_file(str(tmp_path / "single" / "checkpoints" / "last" / "trainable.safetensors"))
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}  # whole tensors
    _finish(_asrtune("export", str(tmp_path / "fsdp"), "--to", "hf", "--out", str(tmp_path / "export")))
    from transformers import WhisperForConditionalGeneration

    exported = WhisperForConditionalGeneration.from_pretrained(tmp_path / "export")
    assert sum(p.numel() for p in exported.parameters()) == sum(
        p.numel() for p in load_model(str(tiny_model_dir)).model.parameters())


def test_fsdp_kill_9_then_resume_gives_the_uninterrupted_losses(tiny_model_dir, tiny_data, tmp_path):
    config = _write_config(_config(tiny_model_dir, tiny_data, max_steps=12, eval_every=6, save_every=1,
                                   parallel="fsdp", schedule="constant"), tmp_path / "run.yaml")
    victim_dir = tmp_path / "killed"
    victim = _asrtune("train", str(config), "--output-dir", str(victim_dir), launcher=_torchrun())
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and victim.poll() is None:
        if (victim_dir / "metrics.jsonl").is_file() and len(_step_losses(victim_dir)) >= 4:
            break
        time.sleep(0.005)
    workers = _children(victim.pid)
    victim.send_signal(signal.SIGKILL)  # the launcher and its workers, as a node failure would
    for worker in workers:
        os.kill(worker, signal.SIGKILL)
    victim.wait()
    assert not (victim_dir / "results.json").exists()
    _finish(_asrtune("train", str(config), "--output-dir", str(victim_dir), "--resume", launcher=_torchrun()))
    _finish(_asrtune("train", str(config), "--output-dir", str(tmp_path / "straight"), launcher=_torchrun()))
    resumed = _step_losses(victim_dir)
    assert [s for s, _ in resumed] == list(range(1, 13))
    assert resumed == _step_losses(tmp_path / "straight")  # fp32 on CPU: bit-identical


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_two_nodes_of_one_process_each_train_like_two_local_processes(tiny_model_dir, tiny_data, tmp_path):
    """The README's multi-node command, as two "nodes" on localhost (c10d rendezvous)."""
    two = _write_config(_config(tiny_model_dir, tiny_data, batch_size=2), tmp_path / "two.yaml")
    endpoint = f"127.0.0.1:{29000 + os.getpid() % 400}"
    nodes = [_asrtune("train", str(two), "--output-dir", str(tmp_path / "nodes"), launcher=[
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", f"asrtune-{os.getpid()}"])
        for _ in range(2)]
    for node in nodes:
        _finish(node)
    _finish(_asrtune("train", str(two), "--output-dir", str(tmp_path / "local"), launcher=_torchrun()))
    on_nodes, local = _step_losses(tmp_path / "nodes"), _step_losses(tmp_path / "local")
    assert [s for s, _ in on_nodes] == list(range(1, 7))
    assert [loss for _, loss in on_nodes] == pytest.approx([loss for _, loss in local], rel=1e-6)
    assert json.loads((tmp_path / "nodes" / "results.json").read_text())["world_size"] == 2


def test_accelerate_launch_that_would_run_one_process_refuses_with_the_torchrun_command(tmp_path):
    from asrtune.errors import AsrtuneError
    from asrtune.training.distributed import check_launch

    command = [sys.executable, "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "asrtune",
               "train", "c.yaml"]
    with pytest.raises(AsrtuneError, match="torchrun --nproc_per_node 2"):
        check_launch(command, {"ACCELERATE_MIXED_PRECISION": "no"})
    check_launch(command, {"ACCELERATE_MIXED_PRECISION": "no", "WORLD_SIZE": "2"})  # really two: fine
    check_launch([sys.executable, "-m", "asrtune", "train"], {})  # not under accelerate: fine
    one = [*command[:4], "--num_processes", "1", "-m", "asrtune"]
    check_launch(one, {"ACCELERATE_MIXED_PRECISION": "no"})  # asked for one, got one


def test_a_failure_on_the_main_process_reaches_every_process_at_once(tiny_model_dir, tiny_data, tmp_path):
    """Two ranks started by hand (no launcher to kill the survivor): the main process fails with an error that
    is not asrtune's own, where only it works (checking the run folder); the other one must learn of it and
    exit non-zero, not wait in a collective until gloo's timeout."""
    run = tmp_path / "broken"
    (run / "checkpoints" / "last").mkdir(parents=True)
    (run / "checkpoints" / "last" / "state.json").write_text("{}")
    (run / "config.yaml").mkdir()  # reading it fails (IsADirectoryError), on the main process only
    config = _write_config(_config(tiny_model_dir, tiny_data), tmp_path / "run.yaml")
    port = str(29600 + os.getpid() % 1000)
    ranks = []
    for rank in (0, 1):
        env = {**_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        log = tempfile.TemporaryFile(mode="w+")
        ranks.append((subprocess.Popen([sys.executable, "-m", "asrtune", "train", str(config), "--output-dir",
                                        str(run), "--resume"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                       text=True), log))
    started = time.monotonic()
    try:
        codes = [process.wait(timeout=180) for process, _ in ranks]
    finally:
        for process, _ in ranks:
            process.kill()
    outputs = []
    for _, log in ranks:
        log.seek(0)
        outputs.append(log.read())
    assert time.monotonic() - started < 120, "a process waited for the failed main process"
    assert codes[0] != 0 and "IsADirectoryError" in outputs[0]
    assert codes[1] == 2, outputs[1][-2000:]
    assert "asrtune: error: the main process failed: IsADirectoryError" in outputs[1]


# --- kill -9 ----------------------------------------------------------------------------------------------


def test_kill_9_then_resume_gives_the_uninterrupted_losses_each_logged_once(tiny_model_dir, tiny_data, tmp_path):
    config = _write_config(_config(tiny_model_dir, tiny_data, max_steps=40, eval_every=20, save_every=1),
                           tmp_path / "run.yaml")
    straight = _asrtune("train", str(config), "--output-dir", str(tmp_path / "straight"))
    victim_dir = tmp_path / "killed"
    victim = _asrtune("train", str(config), "--output-dir", str(victim_dir))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and victim.poll() is None:
        if (victim_dir / "metrics.jsonl").is_file() and len(_step_losses(victim_dir)) >= 7:
            break  # mid-run: steps are being written and checkpointed
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (victim_dir / "results.json").exists()
    _finish(straight)
    _finish(_asrtune("train", str(config), "--output-dir", str(victim_dir), "--resume"))

    resumed = _step_losses(victim_dir)
    assert [s for s, _ in resumed] == list(range(1, 41))  # no step twice, none missing
    assert resumed == _step_losses(tmp_path / "straight")  # fp32 on CPU: bit-identical
    final = [json.loads((tmp_path / run / "results.json").read_text())["final_wer"] for run in ("straight", "killed")]
    assert final[0] == final[1]


# --- non-finite steps -------------------------------------------------------------------------------------


def _poisoned(steps: set[int]):
    """TrainingForward whose loss is NaN on the given (1-based) optimizer steps."""

    class Poisoned(TrainingForward):
        calls = 0

        def forward(self, *args, **kwargs):
            loss, tokens = super().forward(*args, **kwargs)
            if self.training:
                Poisoned.calls += 1
                if Poisoned.calls in steps:
                    loss = loss * float("nan")
            return loss, tokens

    return Poisoned


def test_a_non_finite_step_is_skipped_counted_and_logged(tiny_model_dir, tiny_data, tmp_path):
    results = train(_config(tiny_model_dir, tiny_data), tmp_path / "run", progress=False,
                    parts=RecipeParts(forward=_poisoned({3})))
    records = {r["step"]: r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r}
    assert "skipped" in records[3] and not torch.isfinite(torch.tensor(records[3]["loss"]))
    assert all("skipped" not in records[s] and torch.isfinite(torch.tensor(records[s]["grad_norm"]))
               for s in records if s != 3)
    assert results["nonfinite_steps_skipped"] == 1 and results["steps"] == 6
    trained = load_model(str(tmp_path / "run")).model
    assert all(torch.isfinite(p).all() for p in trained.parameters())  # the NaN step updated nothing


def test_too_many_non_finite_steps_stop_with_the_last_finite_checkpoints(tiny_model_dir, tiny_data, tmp_path):
    config = _config(tiny_model_dir, tiny_data, max_steps=10, max_nonfinite_steps=2)
    with pytest.raises(NonFiniteLoss, match="step 5: .*not finite for 2 steps in a row"):
        train(config, tmp_path / "run", progress=False, parts=RecipeParts(forward=_poisoned(set(range(4, 100)))))
    last = json.loads((tmp_path / "run" / "checkpoints" / "last" / "state.json").read_text())
    assert last["step"] == 3  # the evaluation at step 3 saved it; steps 4 and 5 never did
    kept = load_model(str(tmp_path / "run")).model
    assert all(torch.isfinite(p).all() for p in kept.parameters())
    assert not (tmp_path / "run" / "results.json").exists()


def test_the_cli_exits_non_zero_on_a_non_finite_stop(tiny_model_dir, tiny_data, tmp_path, capsys):
    from asrtune.cli import main

    # A learning rate that blows every weight up after the first step: the losses after it are not finite.
    diverging = dataclasses.replace(_config(tiny_model_dir, tiny_data, max_nonfinite_steps=3),
                                    optim=OptimConfig(learning_rate=1e38))
    config = _write_config(diverging, tmp_path / "run.yaml")
    assert main(["train", str(config), "--output-dir", str(tmp_path / "run")]) != 0
    assert "not finite for 3 steps in a row" in capsys.readouterr().err


# --- the run folder ---------------------------------------------------------------------------------------


def test_an_unwritable_output_folder_fails_before_training(tiny_model_dir, tiny_data, tmp_path):
    from asrtune.errors import AsrtuneError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(AsrtuneError, match="cannot write the run folder"):
        train(_config(tiny_model_dir, tiny_data), blocker / "run", progress=False,
              parts=RecipeParts(load_start=lambda config: pytest.fail("model loaded")))


def test_a_resume_with_new_optim_settings_applies_them(tiny_model_dir, tiny_data, tmp_path):
    config = _config(tiny_model_dir, tiny_data, max_steps=3)
    train(config, tmp_path / "run", progress=False)
    more = dataclasses.replace(config, optim=OptimConfig(learning_rate=5e-4, weight_decay=0.1),
                               loop=dataclasses.replace(config.loop, max_steps=5, schedule="constant"))
    train(more, tmp_path / "run", resume=True, progress=False)
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    change = next(r["optim_change"] for r in records if "optim_change" in r)
    assert change["learning_rate"] == [0.001, 0.0005] and change["weight_decay"] == [0.0, 0.1]
    assert [r["lr"] for r in records if r.get("step") in (4, 5) and "lr" in r] == pytest.approx([5e-4, 5e-4])


# --- memory -----------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """3,000 utterances of a tenth of a second (distinct files, no duration field: read from headers)."""
    folder = tmp_path_factory.mktemp("corpus")
    rows = []
    for i in range(3000):
        audio = folder / "audio" / f"{i}.wav"
        write_tone(audio, seconds=0.1, freq=150.0 + i % 500, seed=i)
        rows.append(Utterance(id=f"c{i}", audio=str(audio), text=f"item {i % 97}"))
    write_manifest(rows, folder / "train.jsonl")
    return folder / "train.jsonl"


def test_a_corpus_of_thousands_costs_no_feature_memory_up_front(corpus):
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    from asrtune.data.manifest import read_manifest
    from conftest import make_tokenizer

    # Whisper's real 30 s extractor: one padded log-mel is 80 x 3000 fp32 = 0.96 MB, so holding the
    # corpus's features would cost ~2.9 GB; read lazily, the dataset holds rows, labels and durations.
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=make_tokenizer())
    before = _rss_mb()
    dataset = FeatureDataset(read_manifest(corpus), processor, multilingual=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=range(0, 3000, 15),
                                         collate_fn=collate)
    read = sum(len(batch["index"]) for batch in loader)  # 200 items read, features dropped after each batch
    grown = _rss_mb() - before
    assert read == 200 and len(dataset) == 3000 and dataset.durations[0] == pytest.approx(0.1)
    assert grown < 400, f"RSS grew {grown:.0f} MB for 3,000 utterances"


def test_training_starts_without_a_pass_over_the_corpus(corpus, tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    import asrtune.data.features as features

    extracted: list[str] = []
    real = features.extract_features

    def counting(path, extractor, cache):
        extracted.append(path)
        return real(path, extractor, cache)

    monkeypatch.setattr(features, "extract_features", counting)
    config = _config(tiny_model_dir, (corpus, tiny_data[1]), max_steps=2, eval_every=2, batch_size=4)
    train(config, tmp_path / "run", progress=False)
    trained_on = [p for p in extracted if "/corpus" in p]
    assert len(trained_on) == 8  # 2 steps x 4 items: only what the batches held, of 3,000
