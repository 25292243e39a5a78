"""Inputs for the explore tests: a real tiny run (``asrtune train``'s own files) and a synthetic large set.

The run: the tiny random Whisper trained (``full``, 150 steps) until it says the training sentences for
their tones; its test set reuses those tones under other sentences, so the kept model improves some
utterances, worsens one, leaves one as wrong as before and makes a substitution (``evening`` ->
``morning``): every category of row the page filters on, from real decoding.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TINY_TEXTS, save_tiny, write_tiny_manifest, write_tone

# the test sentences, one per training tone (tone i is what the model learns to call TINY_TEXTS[i])
TEST_TEXTS = ["hello world", "good evening", "interface interface", "red green blue", "blue sky today", "one"]
VOICES = ["en-us", "en-gb"]
TERMS = "evening\nsky\ndoor\n"


def write_manifest(folder: Path, name: str, texts: list[str], *, voices: list[str] | None = None) -> Path:
    """A manifest of the conftest tones (tone i: 0.4 + 0.1 i seconds), rows with a ``voice`` when given."""
    rows = []
    for i, text in enumerate(texts):
        audio = folder / "audio" / f"{name}-{i}.wav"
        write_tone(audio, seconds=0.4 + 0.1 * i, freq=200.0 + 90 * i, seed=i)
        row = {"id": f"u{i}", "audio": f"audio/{audio.name}", "text": text}
        if voices:
            row["voice"] = voices[i % len(voices)]
        rows.append(row)
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_explore_run(root: Path) -> Path:
    """Train the tiny run into ``root/run`` (about 10 s here) and return the run folder."""
    from asrtune.config import DataConfig, GeneralSet, LoopConfig, OptimConfig, RunConfig
    from asrtune.training.recipe import train

    model = save_tiny(root / "model", seed=0, perturb=0.02)
    data = root / "data"
    training = write_tiny_manifest(data, TINY_TEXTS, "train.jsonl")
    (root / "terms.txt").write_text(TERMS)
    config = RunConfig(
        model=str(model),
        strategy="full",
        seed=1,
        data=DataConfig(
            train=str(training),
            eval=str(training),
            test=str(write_manifest(data, "test", TEST_TEXTS, voices=VOICES)),
            general=(
                GeneralSet(
                    name="everyday_heldout_voice",
                    manifest=str(write_manifest(data, "general", TINY_TEXTS[:2])),
                ),
            ),
            terms=str(root / "terms.txt"),
        ),
        optim=OptimConfig(learning_rate=3e-3),
        loop=LoopConfig(
            max_steps=150,
            batch_size=3,
            eval_every=150,
            eval_batch_size=6,
            max_new_tokens=3,
            log_every=50,
            warmup_ratio=0.0,
            num_workers=0,
        ),
    )
    train(config, root / "run", progress=False)  # the cap of 3 new tokens is on purpose: logged, not raised
    return root / "run"


def synthetic_set(root: Path, n: int = 1000) -> tuple[Path, Path, Path]:
    """A manifest of ``n`` short clips and two saved evaluations of it (``asrtune evaluate --save``'s format).

    Before: every third hypothesis has one substitution. After: every seventh gets one more, the other
    even thirds are fixed, ``s5`` says ``motel`` for ``hotel``. Returns (manifest, before, after).
    """
    from asrtune.explore.sources import save_evaluation

    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    rows, before, after = [], [], []
    for i in range(n):
        audio = root / "clips" / f"s{i}.wav"
        write_tone(audio, seconds=0.3 + 0.01 * (i % 10), freq=300.0 + i % 50, seed=i)
        text = " ".join(words[(i + k) % 10] for k in range(6))
        rows.append({"id": f"s{i}", "audio": f"clips/{audio.name}", "text": text, "speaker": f"spk{i % 4}"})
        first = text.replace(words[(i + 2) % 10], "miss") if i % 3 == 0 else text
        if i % 7 == 0:
            second = first.replace(words[i % 10], "oops")
        elif i % 3 == 0 and i % 2 == 0:
            second = text
        else:
            second = first
        before.append({"id": f"s{i}", "reference": text, "hypothesis": first, "truncated": False})
        after.append({"id": f"s{i}", "reference": text, "hypothesis": second, "truncated": i == 11})
    if n > 5:
        after[5]["hypothesis"] = rows[5]["text"].replace(
            "hotel", "motel"
        )  # foxtrot golf hotel india juliet alpha
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    saves = []
    for name, utterances in (("before", before), ("after", after)):
        save_evaluation(root / f"{name}.json", {"model": f"model-{name}", "scoring_language": None}, utterances,
                        data=manifest, terms=None)
        saves.append(root / f"{name}.json")
    return manifest, saves[0], saves[1]
