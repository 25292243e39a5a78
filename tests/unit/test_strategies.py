"""Strategy specs and what each strategy leaves trainable."""

from __future__ import annotations

import pytest
import torch

from asrtune.errors import AsrtuneError
from asrtune.strategies import STRATEGIES, apply_strategy, default_learning_rate, parse_spec

POSITIONS = "model.encoder.embed_positions.weight"


def test_registered_strategies():
    assert {"full", "freeze", "reinit", "adapter", "lora", "decoder"} <= set(STRATEGIES.names())
    assert STRATEGIES.names() == sorted(STRATEGIES.names())


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("full", [("full", {})]),
        ("lora", [("lora", {"r": 32, "alpha": 64, "dropout": 0.05, "targets": ("q_proj", "v_proj")})]),
        ("lora:r=8,alpha=16", [("lora", {"r": 8, "alpha": 16})]),
        (" lora : r = 4 , dropout=0 ", [("lora", {"r": 4, "dropout": 0.0})]),
        ("lora:targets=q_proj|k_proj", [("lora", {"targets": ("q_proj", "k_proj")})]),
        ("freeze:n=2+lora:r=2", [("freeze", {"n": 2}), ("lora", {"r": 2})]),
        ("reinit:m=3", [("reinit", {"m": 3})]),
        ("adapter:d=16,encoder_layers=top-2", [("adapter", {"d": 16, "encoder_layers": "top-2"})]),
        ("decoder+adapter:encoder_layers=none+lora", [("decoder", {}), ("adapter", {}), ("lora", {})]),
    ],
)
def test_parse_valid_specs(spec, expected):
    strategies = parse_spec(spec)
    assert [s.name for s in strategies] == [name for name, _ in expected]
    for strategy, (_, fields) in zip(strategies, expected):
        for key, value in fields.items():
            assert getattr(strategy, key) == value
        assert type(strategy).__dataclass_params__.frozen


@pytest.mark.parametrize(
    "spec, message",
    [
        ("frozen:n=2", "unknown strategy 'frozen'"),
        ("full+lora", "full cannot be combined with lora"),
        ("reinit:m=1+adapter", "reinit cannot be combined with adapter"),
        ("freeze:n=1+reinit:m=1", "combines freeze and reinit"),
        ("full+decoder", "combines full and decoder"),
        ("lora+freeze:n=1", "freeze must come first"),
        ("freeze:n=-1", "n must be >= 0"),
        ("reinit:m=0", "m must be >= 1"),
        ("adapter:d=0", "d must be >= 1"),
        ("adapter:encoder_layers=top-0", "encoder_layers must be all, none or top-P"),
        ("adapter:encoder_layers=bottom-2", "encoder_layers must be all, none or top-P"),
        ("adapters", "unknown strategy 'adapters'"),
        ("lora:rank=8", "unknown option 'rank'"),
        ("full:x=1", "unknown option 'x'"),
        ("lora:r=abc", "'abc' is not a number"),
        ("lora:r=8.5", "'8.5' is not a number"),
        ("lora:r=0", "r must be >= 1"),
        ("lora:alpha=0", "alpha > 0"),
        ("lora:dropout=1", r"dropout must be in \[0, 1\)"),
        ("lora:targets=", "targets must name at least one module"),
        ("lora:r", "expected key=value"),
        ("lora:r=8,r=9", "r given twice"),
        ("lora+lora:r=4", "names lora more than once"),
        ("", "empty strategy"),
        ("   ", "empty strategy"),
        ("full+", "empty strategy"),
        ("+full", "empty strategy"),
        ("full++lora", "empty strategy"),
    ],
)
def test_parse_invalid_specs(spec, message):
    with pytest.raises(AsrtuneError, match=message):
        parse_spec(spec)


@pytest.mark.parametrize(
    "spec", ["full", "lora", "lora:r=8,alpha=16", "lora:dropout=0.1,targets=q_proj|k_proj"]
)
def test_spec_string_round_trips(spec):
    (strategy,) = parse_spec(spec)
    assert parse_spec(strategy.spec()) == [strategy]
    assert strategy.spec() == spec


def test_default_learning_rates():
    assert default_learning_rate("full") == 1e-5
    assert default_learning_rate("lora:r=4") == 1e-3
    assert default_learning_rate("freeze:n=1") == 1e-5
    assert default_learning_rate("reinit:m=1") == 1e-5
    assert default_learning_rate("adapter") == 3e-4
    assert default_learning_rate("freeze:n=1+lora") == 1e-3  # the last strategy's


def test_full_trains_everything_but_the_encoder_positions(tiny_loaded):
    model = apply_strategy(tiny_loaded.model, "full")
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen == [POSITIONS]
    assert sum(p.requires_grad for p in model.parameters()) == len(list(model.parameters())) - 1


def test_lora_trains_only_the_adapters(tiny_loaded):
    model = apply_strategy(tiny_loaded.model, "lora:r=4,alpha=8")
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # q and v of 6 attentions (2 encoder self, 2 decoder self, 2 cross): A is r x d, B is d x r, d = 32.
    assert len(trainable) == 6 * 2 * 2
    assert sum(p.numel() for p in trainable.values()) == 6 * 2 * (4 * 32 + 32 * 4)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {"q_proj", "v_proj"}
    positions = [p for n, p in model.named_parameters() if n.endswith("encoder.embed_positions.weight")]
    assert len(positions) == 1 and not positions[0].requires_grad


def test_lora_targets_choose_the_projections(tiny_loaded):
    model = apply_strategy(tiny_loaded.model, "lora:r=2,targets=k_proj|out_proj")
    projections = {
        n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad
    }
    assert projections == {"k_proj", "out_proj"}


def test_lora_at_step_zero_computes_the_base_model(tiny_loaded):
    features = torch.randn(2, 80, 100, generator=torch.Generator().manual_seed(0))
    decoder_ids = torch.tensor([[50257, 50362, 464, 3797], [50257, 50362, 15496, 995]])
    with torch.no_grad():
        base = tiny_loaded.model(input_features=features, decoder_input_ids=decoder_ids).logits.clone()
    model = apply_strategy(tiny_loaded.model, "lora:r=4,alpha=8")
    model.eval()
    with torch.no_grad():
        adapted = model(input_features=features, decoder_input_ids=decoder_ids).logits
    assert torch.equal(adapted, base)
    # ... and the adapters do matter once B is not zero.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.fill_(0.05)
        moved = model(input_features=features, decoder_input_ids=decoder_ids).logits
    assert not torch.allclose(moved, base)


def test_strategies_need_a_whisper_model():
    with pytest.raises(AsrtuneError, match="needs a Whisper model"):
        apply_strategy(torch.nn.Linear(2, 2), "full")
