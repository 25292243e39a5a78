"""``asrtune plan MODEL --strategy S --batch-size B [...]``: trainable parameters, predicted peak memory."""

from __future__ import annotations

import argparse
import json

from asrtune.commands import COMMANDS


@COMMANDS.register("plan")
def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plan", help="predict a run's peak training memory before launching it")
    parser.add_argument("model", help="bundled:NAME, HF folder or cached id, run folder, or a published "
                                      "shape: whisper-large-v3, whisper-large-v3-turbo, qwen2-audio-7b, "
                                      "qwen3-asr-0.6b, qwen3-asr-1.7b")
    parser.add_argument("--strategy", default="full", help="strategy spec (default full)")
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per process and step")
    parser.add_argument("--label-tokens", type=int, default=64,
                        help="decoder / transcript tokens of the longest utterance (default 64)")
    parser.add_argument("--data", default=None, help="a training manifest: its longest transcript (in the "
                        "model's tokens) and utterance set --label-tokens and --audio-seconds")
    parser.add_argument("--audio-seconds", type=float, default=30.0,
                        help="LLM families: seconds of audio, for the audio tokens (default 30)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--optim", default="adamw", help="adamw, adafactor, adamw_8bit, paged_adamw_8bit")
    parser.add_argument("--quantization", choices=["4bit", "8bit"], default=None)
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no",
                        help="no: fp32 (default); bf16: bf16 autocast")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="the training device (default: cuda with --gpu-memory, else cpu)")
    parser.add_argument("--gpu-memory", default=None, help="e.g. 24GiB: whether it fits, the largest batch "
                                                           "that does, and what to turn on when it does not")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asrtune.errors import AsrtuneError
    from asrtune.report import print_table
    from asrtune.training.plan import advice, bytes_text, data_lengths, largest_batch, parse_size, plan_memory

    if args.batch_size < 1:
        raise AsrtuneError("--batch-size must be >= 1")
    budget = parse_size(args.gpu_memory) if args.gpu_memory else None
    if args.data:
        args.label_tokens, args.audio_seconds = data_lengths(args.model, args.data)
    device = args.device or ("cuda" if budget else "cpu")
    plan = plan_memory(args.model, args.strategy, batch_size=args.batch_size, label_tokens=args.label_tokens,
                       audio_seconds=args.audio_seconds, precision=args.mixed_precision, optim=args.optim,
                       gradient_checkpointing=args.gradient_checkpointing, quantization=args.quantization,
                       device=device)
    summary = plan.as_dict()
    if budget is not None:
        summary.update(budget_bytes=budget, fits=plan.peak_memory_bytes <= budget,
                       largest_batch=largest_batch(plan, budget))
        if not summary["fits"]:
            summary["advice"] = advice(plan)
    if args.json:
        print(json.dumps(summary))
        return 0
    rows = [["trainable parameters", f"{plan.trainable_params:,} of {plan.total_params:,} "
                                     f"({100 * plan.trainable_params / plan.total_params:.2f}%)"],
            ["weights" + (f" ({plan.quantization} base)" if plan.quantization else ""),
             bytes_text(plan.weights_bytes)],
            ["gradients", bytes_text(plan.gradients_bytes)],
            [f"optimizer state ({plan.optim})", bytes_text(plan.optimizer_bytes)],
            [f"activations ({plan.layers_with_activations} layers, "
             f"{'checkpointed' if plan.gradient_checkpointing else 'kept'}, batch {plan.batch_size})",
             bytes_text(plan.activations_bytes)],
            ["logits", bytes_text(plan.logits_bytes)],
            [f"training process ({device})", bytes_text(plan.process_bytes)],
            ["predicted peak", bytes_text(plan.peak_memory_bytes)]]
    if budget is not None:
        rows.append([f"fits {bytes_text(budget)}", "yes" if summary["fits"] else "no"])
        rows.append(["largest batch that fits", str(summary["largest_batch"])])
    print_table([f"{plan.model} · {plan.strategy} · {plan.precision}", "memory"], rows)
    for line in summary.get("advice", []):
        print(f"  to fit: {line}")
    return 0
