"""Training-time data in the recipe: augmentation, duration buckets, the feature cache; resumed exactly."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import read_jsonl
from safetensors.torch import load_file

from asrtune.config import DataConfig, LoopConfig, OptimConfig, RunConfig
from asrtune.data.augment import augmented_item
from asrtune.data.sampler import RankBatchSampler
from asrtune.evaluation.decode import Evaluation
from asrtune.evaluation.metrics import Scores
from asrtune.training.parts import RecipeParts
from asrtune.training.recipe import train

AUGMENT = "speed:factors=0.9|1.1+noise:p=1,min_snr_db=15,max_snr_db=25+gain+specaugment:time_width=20"


def _fixed_evaluation(loaded, dataset, config):
    n = len(dataset)
    scores = Scores(
        wer=0.5,
        cer=0.5,
        raw_wer=0.5,
        substitutions=0,
        deletions=0,
        insertions=0,
        reference_words=n,
        n=n,
        skipped_empty=0,
    )
    return Evaluation(
        scores=scores,
        hypotheses=["x"] * n,
        references=[u.text for u in dataset.utterances],
        ids=[u.id for u in dataset.utterances],
    )


def _config(model_dir, data, **data_options) -> RunConfig:
    train_manifest, eval_manifest = data
    return RunConfig(
        model=str(model_dir),
        strategy="lora:r=4,alpha=8",
        seed=5,
        data=DataConfig(train=str(train_manifest), eval=str(eval_manifest), **data_options),
        optim=OptimConfig(learning_rate=1e-2),
        loop=LoopConfig(
            max_steps=4,
            batch_size=2,
            grad_accum_steps=2,
            eval_every=2,
            eval_batch_size=4,
            max_new_tokens=4,
            log_every=1,
            warmup_ratio=0.0,
            num_workers=0,  # the recording augmenter below runs in this process
        ),
    )


def crashing_sampler(at: int):
    """A RankBatchSampler that raises KeyboardInterrupt when asked for global batch ``at``."""

    class Crashing(RankBatchSampler):
        def __iter__(self):
            for batch in super().__iter__():
                if batch[0][1] >= at:
                    raise KeyboardInterrupt
                yield batch

    return Crashing


def _losses(run_dir):
    return [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


def test_augmented_bucketed_run_resumes_to_the_same_weights(tiny_model_dir, tiny_data, tmp_path):
    config = _config(tiny_model_dir, tiny_data, augment=AUGMENT, duration_buckets=2)
    calls = []
    recording = RecipeParts(score=_fixed_evaluation,
                            augment=lambda *a, **k: calls.append(a[1:]) or augmented_item(*a, **k))
    train(config, tmp_path / "straight", progress=False, parts=recording)
    # 6 items in 2 buckets of 3, batches of 2: 4 batches (2+1+2+1 items) an epoch; 8 micro-batches = 2 epochs.
    assert len(calls) == 12  # every item of every micro-batch went through the augmenter
    assert sorted(index for index, _, _ in calls) == sorted(list(range(6)) * 2)
    assert [draw for _, _, draw in calls] == sorted(draw for _, _, draw in calls)

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "interrupted", progress=False,
              parts=RecipeParts(score=_fixed_evaluation, batch_sampler=crashing_sampler(4)))
    train(config, tmp_path / "interrupted", resume=True, progress=False, parts=RecipeParts(score=_fixed_evaluation))

    straight = load_file(str(tmp_path / "straight/checkpoints/last/trainable.safetensors"))
    resumed = load_file(str(tmp_path / "interrupted/checkpoints/last/trainable.safetensors"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert (straight[name] == resumed[name]).all(), name
    assert _losses(tmp_path / "interrupted") == pytest.approx(_losses(tmp_path / "straight"), rel=1e-6)
    # Augmentation changes what the model sees: the losses differ from an unaugmented run's (slightly: the
    # tiny random model barely listens to its input).
    train(_config(tiny_model_dir, tiny_data, duration_buckets=2), tmp_path / "plain", progress=False,
          parts=RecipeParts(score=_fixed_evaluation))
    assert all(a != b for a, b in zip(_losses(tmp_path / "plain"), _losses(tmp_path / "straight")))


def test_augmentation_turns_the_encoder_cache_off(tiny_model_dir, tiny_data, tmp_path, capsys):
    def no_encoder_cache(*args, **kwargs):
        raise AssertionError("the encoder cache must not be used with augmentation")

    config = dataclasses.replace(
        _config(tiny_model_dir, tiny_data, augment="specaugment"),
        strategy="decoder",
        loop=dataclasses.replace(_config(tiny_model_dir, tiny_data).loop, max_steps=1),
    )
    results = train(config, tmp_path / "run", progress=False,
                    parts=RecipeParts(score=_fixed_evaluation, encode_prefix=no_encoder_cache))
    assert results["steps"] == 1
    assert "changes its inputs every step: encoding every step" in capsys.readouterr().out


def test_without_augmentation_nothing_changes(tiny_model_dir, tiny_data, tmp_path):
    def never(*args, **kwargs):
        raise AssertionError("no augmentation is configured")

    parts = RecipeParts(score=_fixed_evaluation, augment=never)
    cached = train(_config(tiny_model_dir, tiny_data), tmp_path / "cached", progress=False, parts=parts)
    uncached = train(
        _config(tiny_model_dir, tiny_data, feature_cache=False), tmp_path / "uncached", progress=False, parts=parts
    )
    assert cached["steps"] == uncached["steps"] == 4
    # Features read back from the cache are the features: the same losses to the last bit.
    assert _losses(tmp_path / "cached") == _losses(tmp_path / "uncached")
