"""GPU training throughput and peak memory: bundled base (Whisper) and bundled:llm-asr-tiny, in bf16.

For whenever a CUDA GPU is available; on a machine without one it says so and exits 0. Every run
trains for ``--steps`` steps (batch ``--batch-size``, bf16 autocast, AdamW) on the demo's medical
training sentences spoken by espeak-ng (the first ``--utterances``), without evaluation, each run in
its own process so its peak memory (``torch.cuda.max_memory_allocated``) is its own. samples/s
leaves out the first ``--warmup`` steps (CUDA kernels and cuBLAS plans are chosen there) and charges
asrtune's frozen-encoder cache to the run, as ``benchmarks/train_speed.py`` does.

Runs (``--models``):

- ``whisper``: ``bundled:base`` through asrtune's recipe (``asrtune.training.recipe.train``), one row
  per ``--whisper-strategies`` (default ``full`` and ``lora:r=32,alpha=64``).
- ``llm``: the assembly of :func:`asrtune.models.llm_asr_tiny.build_llm_asr_tiny` (tiny.en's encoder,
  a Linear projector, SmolLM2-135M-Instruct), one row per ``--llm-strategies`` and runner:

  - ``plain``: a PyTorch loop over transformers' own ``Qwen2AudioForConditionalGeneration`` and
    ``Qwen2AudioProcessor`` (the chat template's prompt, labels masked up to the transcript, PEFT
    LoRA r=8, alpha=32 on the LLM's q,v; the encoder frozen and recomputed every step): the
    reference the ratios are taken against, runnable today;
  - ``asrtune``: the same folder as a ``RunConfig`` model through asrtune's recipe. It needs the model
    families of issue 15 (``asrtune.models.family`` claiming the folder and a ``projector``
    strategy); until they are there the row is skipped with the reason.

    python benchmarks/gpu.py [--steps 40] [--warmup 5] [--batch-size 8] [--utterances 64]
                             [--models whisper llm] [--json] [--cpu]

``--cpu`` runs the same on the CPU (fp32 peak RSS instead of GPU memory) to check the script itself;
its numbers are not the point. ``--json``: the last line is {"results": [{"model", "strategy",
"runner", "samples_per_second", "peak_memory_mb", ...}]}. Numbers only; nothing asserts on seconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WHISPER = "bundled:base"
WHISPER_STRATEGIES = ["full", "lora:r=32,alpha=64"]
LLM_STRATEGIES = ["projector", "projector+lora:r=8,alpha=32"]
INSTRUCTION = "Transcribe the audio."
LLM_LR = 1e-4  # ms-swift / LLaMA-Factory's LoRA default; the projector trains at it too here


def _cuda_ready() -> bool:
    import torch

    return torch.cuda.is_available()


def _data(work: Path, utterances: int) -> tuple[Path, Path]:
    from asrtune.data.manifest import read_manifest, write_manifest
    from asrtune.data.synth import SynthSettings, synthesise_lines
    from asrtune.demo import demo_splits

    train = synthesise_lines(demo_splits()["train"][:utterances], work / "train",
                             settings=SynthSettings(seed=0), prefix="train", language="en", progress=False)
    evaluation = work / "eval.jsonl"  # the recipe wants an eval set; the benchmark never evaluates
    write_manifest(read_manifest(train)[:2], evaluation)
    return train, evaluation


def _reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_recipe(model: str, strategy: str, args: argparse.Namespace, train: Path, evaluation: Path,
               out: Path) -> dict:
    """asrtune's recipe, bf16 on the GPU (fp32 with ``--cpu``)."""
    from asrtune.config import DataConfig, LoopConfig, RunConfig
    from asrtune.training.recipe import Recipe

    device = "cpu" if args.cpu else "cuda"
    config = RunConfig(model=model, strategy=strategy, seed=0,
                       data=DataConfig(train=str(train), eval=str(evaluation)),
                       loop=LoopConfig(max_steps=args.steps, batch_size=args.batch_size,
                                       eval_every=args.steps + 1, eval_at_start=False,
                                       mixed_precision="no" if args.cpu else "bf16"))
    _reset_peak(device)
    recipe = Recipe(config, out, progress=False, final_evaluation=False)
    results = recipe.train()
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [m["seconds"] for m in steps if "seconds" in m and "loss" in m][args.warmup:]
    cache = (results.get("encoder_cache") or {}).get("seconds", 0.0)
    return {"samples_per_second": len(timed) * args.batch_size / (sum(timed) + cache), "cache_seconds": cache,
            "peak_memory_mb": _peak_mb(device), "trainable_params": recipe.trainable,
            "precision": {"no": "fp32"}.get(results["mixed_precision"], results["mixed_precision"])}


def llm_family_missing(folder: Path) -> str | None:
    """Why asrtune's recipe cannot train the assembly yet (None: it can)."""
    try:
        from asrtune.models.family import family_for_folder
        from asrtune.strategies import STRATEGIES
    except ImportError as error:
        return f"asrtune's model families are not there yet ({error})"
    from asrtune.errors import AsrtuneError

    try:
        family_for_folder(folder)
    except AsrtuneError as error:
        return f"no asrtune family claims {folder.name}: {error}"
    return None if "projector" in STRATEGIES else "asrtune has no projector strategy yet"


def _llm_batches(processor, rows: list, batch_size: int):
    """Endless batches: chat prompt with the audio, then the transcript and <|im_end|> as the only labels."""
    import itertools


    from asrtune.data.audio import load_audio

    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": INSTRUCTION}]}],
        add_generation_prompt=True, tokenize=False)
    processor.tokenizer.padding_side = "right"
    end = processor.tokenizer.eos_token
    for start in itertools.cycle(range(0, len(rows) - batch_size + 1, batch_size)):
        chunk = rows[start:start + batch_size]
        audio = [load_audio(row.audio) for row in chunk]
        texts = [prompt + row.text + end for row in chunk]
        batch = processor(text=texts, audio=audio, sampling_rate=16_000, return_tensors="pt", padding=True)
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        for i, text in enumerate(texts):  # mask everything before the transcript
            expanded = processor(text=[prompt], audio=[audio[i]], sampling_rate=16_000, return_tensors="pt")
            labels[i, : expanded["input_ids"].shape[1]] = -100
        yield {**batch, "labels": labels}


def _llm_model(folder: Path, strategy: str, device: str):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    model.requires_grad_(False)
    parts = strategy.split("+")
    if any(p.startswith("lora") for p in parts):
        config = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0,
                            target_modules=r".*language_model.*\.(q_proj|v_proj)")
        model = get_peft_model(model, config)
    if "projector" in parts:
        for parameter in model.get_submodule(_projector_path(model)).parameters():
            parameter.requires_grad_(True)
    return model.to(device), AutoProcessor.from_pretrained(folder)


def _projector_path(model) -> str:
    return next(name for name, _ in model.named_modules() if name.endswith("multi_modal_projector"))


def run_llm_plain(strategy: str, args: argparse.Namespace, train: Path, out: Path) -> dict:
    """The reference loop over transformers' own classes (see the module docstring)."""
    import torch

    from asrtune.data.manifest import read_manifest
    from asrtune.models.llm_asr_tiny import build_llm_asr_tiny

    device = "cpu" if args.cpu else "cuda"
    model, processor = _llm_model(build_llm_asr_tiny(), strategy, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LLM_LR, fused=device == "cuda")
    batches = _llm_batches(processor, read_manifest(train), args.batch_size)
    model.train()
    _reset_peak(device)
    seconds = []
    for _ in range(args.steps):
        batch = {k: v.to(device) for k, v in next(batches).items()}
        started = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=not args.cpu):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    timed = seconds[args.warmup:]
    return {"samples_per_second": len(timed) * args.batch_size / sum(timed),
            "peak_memory_mb": _peak_mb(device), "trainable_params": sum(p.numel() for p in params),
            "precision": "fp32" if args.cpu else "bf16", "final_loss": float(loss)}


def _child(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix=f"bench-gpu-{args.runner}-") as work:
        result = _run_one(args, Path(work) / "run")
    print(json.dumps(result))
    return 0


def _run_one(args: argparse.Namespace, out: Path) -> dict:
    train, evaluation = Path(args.train), Path(args.eval)
    if args.runner == "plain":
        result = run_llm_plain(args.strategy, args, train, out)
    elif args.model == "llm":
        from asrtune.models.llm_asr_tiny import build_llm_asr_tiny

        result = run_recipe(str(build_llm_asr_tiny()), args.strategy, args, train, evaluation, out)
    else:
        result = run_recipe(WHISPER, args.strategy, args, train, evaluation, out)
    return result


def _plan(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(model, strategy, runner) rows, in order (LLM rows that cannot run yet are skipped in _measure)."""
    plan = []
    if "whisper" in args.models:
        plan += [("whisper", strategy, "asrtune") for strategy in args.whisper_strategies]
    if "llm" in args.models:
        for strategy in args.llm_strategies:
            plan += [("llm", strategy, "plain"), ("llm", strategy, "asrtune")]
    return plan


def _measure(args: argparse.Namespace, plan: list[tuple[str, str, str]], train: Path,
             evaluation: Path) -> list[dict]:
    rows = []
    for model, strategy, runner in plan:
        row = {"model": WHISPER if model == "whisper" else "bundled:llm-asr-tiny", "strategy": strategy,
               "runner": runner}
        if model == "llm" and runner == "asrtune":
            from asrtune.models.llm_asr_tiny import build_llm_asr_tiny

            reason = llm_family_missing(build_llm_asr_tiny())
            if reason:
                rows.append({**row, "skipped": reason})
                print(f"skipped {row['model']} {strategy} (asrtune): {reason}", file=sys.stderr, flush=True)
                continue
        command = [sys.executable, __file__, "--child", "--model", model, "--strategy", strategy,
                   "--runner", runner, "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--batch-size", str(args.batch_size), "--train", str(train), "--eval", str(evaluation),
                   *(["--cpu"] if args.cpu else [])]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
            rows.append({**row, "failed": last})
            print(f"FAILED {row}:\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
            continue
        rows.append({**row, **json.loads(done.stdout.strip().splitlines()[-1])})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _table(rows: list[dict], memory: str) -> None:
    from asrtune.report import print_table

    reference = {r["strategy"]: r["samples_per_second"] for r in rows
                 if r["runner"] == "plain" and "samples_per_second" in r}
    table = []
    for r in rows:
        if "samples_per_second" not in r:
            table.append([r["model"], r["strategy"], r["runner"], "-", "-", "-", "-",
                          r.get("skipped") or f"failed: {r.get('failed')}"])
            continue
        ratio = reference.get(r["strategy"]) if r["model"].endswith("llm-asr-tiny") else None
        table.append([r["model"], r["strategy"], r["runner"], f"{r['samples_per_second']:.2f}",
                      f"{r['samples_per_second'] / ratio:.2f}x" if ratio else "",
                      f"{r['peak_memory_mb']:,.0f}",
                      f"{r['trainable_params']:,}", r.get("precision", "")])
    header = ["model", "strategy", "runner", "samples/s", "vs plain", memory, "trainable", "precision / note"]
    print_table(header, table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of samples/s")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--utterances", type=int, default=64)
    parser.add_argument("--models", nargs="*", choices=["whisper", "llm"], default=["whisper", "llm"])
    parser.add_argument("--whisper-strategies", nargs="*", default=WHISPER_STRATEGIES)
    parser.add_argument("--llm-strategies", nargs="*", default=LLM_STRATEGIES)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-gpu"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cpu", action="store_true",
                        help="run on the CPU in fp32 (checks the script, not the GPU)")
    for hidden in ("--model", "--strategy", "--runner", "--train", "--eval"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    if args.warmup >= args.steps:
        parser.error("--warmup must be smaller than --steps")
    if not args.cpu and not _cuda_ready():
        print("no GPU: torch.cuda.is_available() is False on this machine; nothing measured "
              "(run it where a CUDA GPU is, or pass --cpu to check the script)")
        return 0
    train, evaluation = _data(args.work_dir, args.utterances)
    rows = _measure(args, _plan(args), train, evaluation)
    _table(rows, "peak RSS MB" if args.cpu else "peak GPU MB")
    if args.json:
        print(json.dumps({"results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
