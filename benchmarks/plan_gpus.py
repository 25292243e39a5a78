"""``asrtune plan``'s predictions for the big published shapes on 24 / 40 / 80 GiB GPUs, setting by setting.

Each row is one ``asrtune plan MODEL --strategy S --batch-size B --mixed-precision bf16 --device cuda [...]``
(bf16 autocast, asrtune's arithmetic on Ampere and later GPUs; fp32 master weights and optimizer state;
Whisper's labels 64 tokens, Qwen2-Audio's 30 s of audio and 64 transcript tokens): the predicted peak at
the row's batch, and the largest batch that fits each card. Predictions only: no GPU measured them.

    python benchmarks/plan_gpus.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from asrtune.cli import quiet_libraries
from asrtune.training.plan import GIB, largest_batch, plan_memory

CARDS = (24, 40, 80)
ROWS = [
    ("whisper-large-v3", "full", 8, {}),
    ("whisper-large-v3", "full", 8, {"gradient_checkpointing": True}),
    ("whisper-large-v3", "full", 8, {"gradient_checkpointing": True, "optim": "adamw_8bit"}),
    ("whisper-large-v3", "lora:r=32,alpha=64", 8, {}),
    ("whisper-large-v3", "lora:r=32,alpha=64", 8, {"gradient_checkpointing": True}),
    ("whisper-large-v3", "lora:r=32,alpha=64", 8, {"gradient_checkpointing": True, "quantization": "4bit"}),
    ("whisper-large-v3-turbo", "full", 8, {}),
    ("whisper-large-v3-turbo", "full", 8, {"gradient_checkpointing": True, "optim": "adamw_8bit"}),
    ("whisper-large-v3-turbo", "decoder", 8, {}),
    ("qwen2-audio-7b", "lora:r=8,alpha=32", 1, {}),
    ("qwen2-audio-7b", "lora:r=8,alpha=32", 1, {"gradient_checkpointing": True}),
    ("qwen2-audio-7b", "lora:r=8,alpha=32", 1, {"gradient_checkpointing": True, "quantization": "4bit"}),
    ("qwen2-audio-7b", "projector+lora:r=8,alpha=32", 1,
     {"gradient_checkpointing": True, "quantization": "4bit"}),
    ("qwen2-audio-7b", "full", 1, {"gradient_checkpointing": True, "optim": "adamw_8bit"}),
]


def _settings(options: dict) -> str:
    words = []
    if options.get("gradient_checkpointing"):
        words.append("checkpointing")
    if options.get("optim"):
        words.append(options["optim"])
    if options.get("quantization"):
        words.append(options["quantization"])
    return ", ".join(words) or "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    quiet_libraries()
    rows = []
    for model, strategy, batch, options in ROWS:
        plan = plan_memory(model, strategy, batch_size=batch, precision="bf16", device="cuda",
                           audio_seconds=30.0, **options)
        rows.append({"model": model, "strategy": strategy, "settings": _settings(options),
                     "batch_size": batch,
                     "trainable_params": plan.trainable_params, "peak_gib": plan.peak_memory_bytes / GIB,
                     "largest_batch": {card: largest_batch(plan, card * GIB) for card in CARDS}})
    print("| model | strategy | settings | trainable | predicted peak (batch) "
          "| largest batch on 24 / 40 / 80 GiB |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        fits = " / ".join(str(row["largest_batch"][card]) for card in CARDS)
        print(f"| {row['model']} | `{row['strategy']}` | {row['settings']} "
              f"| {row['trainable_params'] / 1e6:,.1f} M | {row['peak_gib']:.1f} GiB ({row['batch_size']}) "
              f"| {fits} |")
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
