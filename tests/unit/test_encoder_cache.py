"""The frozen-prefix activation cache: which prefix is cached, and exactness against the uncached path."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_training import make_config

from asrtune.models.family import CachePlan, family_of
from asrtune.models.whisper import encode_top
from asrtune.strategies import apply_strategy
from asrtune.training.encoder_cache import PrefixCache
from asrtune.training.parts import RecipeParts, encode_prefix
from asrtune.training.recipe import SharedPrefix, train

from conftest import read_jsonl, tiny_whisper


@pytest.mark.parametrize("spec, expected", [
    ("full", None),
    ("decoder", CachePlan(layers=3, whole=True)),
    ("decoder+lora:r=2", CachePlan(layers=3, whole=True)),
    ("freeze:n=2", CachePlan(layers=2, whole=False)),
    ("reinit:m=1", CachePlan(layers=2, whole=False)),
    ("adapter:d=4,encoder_layers=top-1", CachePlan(layers=2, whole=False)),
    ("lora:r=2", CachePlan(layers=0, whole=False)),
])
def test_the_cached_prefix_is_the_largest_frozen_one(spec, expected):
    model = apply_strategy(tiny_whisper(encoder_layers=3), spec)
    assert family_of(model).cache_plan(model) == expected


def test_dropout_turns_the_cache_off():
    model = apply_strategy(tiny_whisper(dropout=0.1), "decoder")
    assert family_of(model).cache_plan(model) is None


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("spec", ["decoder", "freeze:n=1", "reinit:m=1", "lora:r=4", "adapter:d=8,encoder_layers=top-1",
                                  "freeze:n=1+lora:r=4"])
def test_loss_and_gradients_equal_the_uncached_path(spec, precision):
    torch.manual_seed(0)
    model = apply_strategy(tiny_whisper(seed=3, perturb=0.05, encoder_layers=2), spec)
    with torch.no_grad():  # trained-looking additions, so the comparison is not between zeros
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and ("lora_B" in name or ".up." in name):
                parameter.normal_(0, 0.05)
    model.train()
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(3, 80, 100, generator=generator)
    labels = torch.randint(0, 50000, (3, 5), generator=generator)

    torch.manual_seed(7)  # LoRA dropout draws masks: the same draws on both paths
    with _autocast(precision):  # bf16: the recipe encodes the prefix under the step's autocast too
        loss = model(input_features=features, labels=labels).loss
    loss.backward()
    uncached = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    plan = family_of(model).cache_plan(model)
    with _autocast(precision):
        prefix = family_of(model).encode_prefix(model, features, plan, torch.full((3,), 100)).float()
    model.train()
    torch.manual_seed(7)
    with _autocast(precision):
        cached_loss = model(encoder_outputs=(encode_top(model, prefix, plan),), labels=labels).loss
    cached_loss.backward()
    assert torch.allclose(cached_loss, loss, atol=1e-6, rtol=0)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert torch.allclose(parameter.grad, uncached[name], atol=1e-6, rtol=1e-5), name


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_the_recipe_trains_the_same_with_and_without_the_cache(tiny_model_dir, tiny_data, tmp_path, precision):
    config = make_config(tiny_model_dir, tiny_data, max_steps=3, eval_every=3)
    config = dataclasses.replace(config, strategy="freeze:n=1",
                                 loop=dataclasses.replace(config.loop, mixed_precision=precision))
    train(config, tmp_path / "cached", progress=False)
    off = dataclasses.replace(config, loop=dataclasses.replace(config.loop, encoder_cache_mb=0))
    train(off, tmp_path / "uncached", progress=False)
    losses = lambda run: [r["loss"] for r in read_jsonl(tmp_path / run / "metrics.jsonl") if "loss" in r]  # noqa: E731
    assert losses("cached") == pytest.approx(losses("uncached"), abs=1e-5)
    assert len(losses("cached")) == 3


def test_runs_in_one_process_share_the_prefix_they_have_in_common(tiny_model_dir, tiny_data, tmp_path):
    encoded: list[tuple[CachePlan, int]] = []

    def counting(model, features, plan, frames):
        encoded.append((plan, features.shape[0]))
        return encode_prefix(model, features, plan, frames)

    counted = RecipeParts(encode_prefix=counting)
    config = dataclasses.replace(make_config(tiny_model_dir, tiny_data, max_steps=2, eval_every=2),
                                 strategy="freeze:n=1")
    faster = dataclasses.replace(config, optim=dataclasses.replace(config.optim, learning_rate=1e-3))
    shared = SharedPrefix()
    train(config, tmp_path / "a", progress=False, shared_prefix=shared, parts=counted)
    first = list(encoded)
    # 2 steps of 2 of the 6 training utterances: each is encoded the first time a step meets it, never again
    assert {plan for plan, _ in first} == {CachePlan(layers=1, whole=False)} and sum(n for _, n in first) == 4
    train(faster, tmp_path / "b", progress=False, shared_prefix=shared, parts=counted)
    assert encoded == first  # the second run reused the first one's outputs
    train(faster, tmp_path / "b-fresh", progress=False, parts=counted)  # encodes again: the same losses
    losses = lambda run: [r["loss"] for r in read_jsonl(tmp_path / run / "metrics.jsonl") if "loss" in r]  # noqa: E731
    assert losses("b") == losses("b-fresh") and len(losses("b")) == 2
    train(dataclasses.replace(config, strategy="decoder"), tmp_path / "c", progress=False, shared_prefix=shared,
          parts=counted)
    assert {plan for plan, _ in encoded[2 * len(first):]} == {CachePlan(layers=2, whole=True)}


def test_the_prefix_cache_spills_to_disk_beyond_its_memory_budget(tmp_path):
    shape = (6, 4)
    one_item_mb = 6 * 4 * 4 / 2**20
    cache = PrefixCache(("k",), shape, memory_mb=2 * one_item_mb, spill_dir=tmp_path / "spill", n_items=5)
    outputs = {i: torch.full(shape, float(i)) for i in range(5)}
    computed: list[int] = []

    def compute(items):
        computed.extend(items)
        return torch.stack([outputs[i] for i in items])

    first = cache.get([0, 1, 2, 3, 4], compute)
    again = cache.get([4, 3, 2, 1, 0], compute)
    assert computed == [0, 1, 2, 3, 4]  # each encoded once: two in memory, three in the file
    assert torch.equal(first, torch.stack([outputs[i] for i in range(5)]))
    assert torch.equal(again, torch.stack([outputs[i] for i in (4, 3, 2, 1, 0)]))
    stats = cache.stats()
    assert (stats["in_memory"], stats["on_disk"], stats["not_cached"]) == (2, 3, 0)
    files = list((tmp_path / "spill").iterdir())
    assert len(files) == 1
    cache.close()
    assert not files[0].exists()


def test_without_a_spill_folder_items_beyond_memory_are_encoded_each_time(tmp_path):
    cache = PrefixCache(("k",), (2, 2), memory_mb=0, spill_dir=None, n_items=3)
    calls = []
    compute = lambda items: calls.append(list(items)) or torch.zeros(len(items), 2, 2)  # noqa: E731
    cache.get([0, 1], compute)
    cache.get([0, 1], compute)
    assert calls == [[0, 1], [0, 1]] and cache.stats()["not_cached"] == 4


def test_items_of_different_lengths_are_kept_as_long_as_they_are_and_padded_per_batch(tmp_path):
    lengths = {0: 3, 1: 6, 2: 1, 3: 5}
    outputs = {i: torch.arange(n * 2, dtype=torch.float32).reshape(n, 2) + 10 * i for i, n in lengths.items()}
    one_row_mb = 2 * 4 / 2**20
    cache = PrefixCache(("k",), (6, 2), memory_mb=9 * one_row_mb, spill_dir=tmp_path / "spill", n_items=4)
    computed: list[int] = []

    def compute(items):
        computed.extend(items)
        return [outputs[i] for i in items]

    batch = cache.get([1, 0, 2, 3], compute)
    assert batch.shape == (4, 6, 2) and computed == [1, 0, 2, 3]
    again = cache.get([2, 3], compute)  # 0 and 1 fill the memory (9 rows); 2 and 3 went to the file
    assert computed == [1, 0, 2, 3] and again.shape == (2, 5, 2)
    assert torch.equal(again[0, :1], outputs[2]) and torch.equal(again[0, 1:], torch.zeros(4, 2))
    assert torch.equal(again[1], outputs[3]) and torch.equal(batch[1, :3], outputs[0])
    assert cache.stats()["in_memory"] == 2 and cache.stats()["on_disk"] == 2
