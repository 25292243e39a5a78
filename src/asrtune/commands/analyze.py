"""``asrtune analyze cka --base MODEL --tuned MODEL --data MANIFEST [--json] [--plot FILE]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from asrtune.commands import COMMANDS


@COMMANDS.register("analyze")
def add(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("analyze", help="analyses of a tuned model against its base (cka)")
    analyses = parser.add_subparsers(dest="analysis", required=True)
    cka = analyses.add_parser(
        "cka",
        help="linear CKA per encoder (and decoder) layer between two models on the same utterances",
        description="Linear CKA per layer between the base and tuned models' representations of the same "
        "utterances, over the encoder frames that hold speech (not Whisper's 30 s padding); "
        "seed 002's Fig. 1.",
    )
    cka.add_argument(
        "--base",
        default=None,
        help="the model before fine-tuning (default: the `model` of a --tuned run folder)",
    )
    cka.add_argument("--tuned", required=True, help="the model after: a run folder, or any model source")
    cka.add_argument("--data", required=True, type=Path, help="manifest of the utterances to compare on")
    cka.add_argument(
        "--utterances", type=int, default=100, help="random sample of this many (seed 002: 100; 0: all)"
    )
    cka.add_argument("--seed", type=int, default=0, help="seed of the sample")
    cka.add_argument(
        "--decoder", action="store_true", help="also decoder layers (teacher-forced on the references)"
    )
    cka.add_argument("--language", default=None, help="language for rows without one (decoder prompt)")
    cka.add_argument("--batch-size", type=int, default=8)
    cka.add_argument(
        "--json", action="store_true", help='print {"encoder": {"0": ..., ...}} as the last line'
    )
    cka.add_argument("--plot", type=Path, default=None, help="write the CKA curve(s) to this PNG")
    cka.set_defaults(func=run_cka)
    use = analyses.add_parser(
        "audio-use",
        help="does the model use the audio: its loss with each clip's own audio, another clip's, silence",
        description="The teacher-forced loss per reference token with each clip's own audio, with another clip's "
        "(cut or padded with silence to the same length) and with silence, and the paired gaps with 95% "
        "intervals: a model that ignores its audio shows none.",
    )
    use.add_argument("model", help="a run folder or any model source")
    use.add_argument("--data", required=True, type=Path, help="manifest of the utterances")
    use.add_argument("--utterances", type=int, default=60, help="random sample of this many (0: all)")
    use.add_argument("--seed", type=int, default=0, help="seed of the sample and of the shuffle")
    use.add_argument("--language", default=None, help="language for rows without one")
    use.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    use.set_defaults(func=run_audio_use)


def _base_of(tuned: str) -> str:
    from asrtune.config import config_from_dict, parse_yaml
    from asrtune.errors import AsrtuneError
    from asrtune.models.load import is_run_dir

    path = Path(tuned)
    if not (path.is_dir() and is_run_dir(path)):
        raise AsrtuneError("--base is needed unless --tuned is a run folder")
    return config_from_dict(parse_yaml((path / "config.yaml").read_text())).model


def run_cka(args: argparse.Namespace) -> int:
    from asrtune.analysis.cka import layer_cka, sample_indices
    from asrtune.analysis.plots import plot_cka
    from asrtune.data.features import FeatureDataset
    from asrtune.data.manifest import read_manifest
    from asrtune.report import print_table
    from asrtune.runs.load import load_model

    base = load_model(args.base or _base_of(args.tuned))
    tuned = load_model(args.tuned)
    utterances = read_manifest(args.data)
    chosen = sample_indices(
        len(utterances), args.utterances or None, args.seed
    )  # extract only their features
    dataset = FeatureDataset(
        [utterances[i] for i in chosen],
        base.processor,
        multilingual=base.multilingual,
        language=args.language,
    )
    result = layer_cka(
        base, tuned, dataset, decoder=args.decoder, batch_size=args.batch_size, utterances=None
    )
    table = [[f"encoder {i}", f"{v:.4f}"] for i, v in result.encoder.items()]
    table += [[f"decoder {i}", f"{v:.4f}"] for i, v in (result.decoder or {}).items()]
    out = sys.stderr if args.json else sys.stdout
    print_table(["layer", "linear CKA"], table, file=out)
    print(
        f"{result.utterances} utterances, {result.frames} speech frames"
        + (f", {result.tokens} decoder tokens" if result.decoder else ""),
        file=out,
    )
    if args.plot:
        curves = (
            {"encoder": result.encoder}
            if not result.decoder
            else {"encoder": result.encoder, "decoder": result.decoder}
        )
        plot_cka(
            curves,
            args.plot,
            title=f"CKA: {Path(args.tuned).name} vs its base",
            side="encoder / decoder" if result.decoder else "encoder",
        )
        print(f"plot: {args.plot}", file=out)
    if args.json:
        print(json.dumps(result.as_json()))
    return 0


def run_audio_use(args: argparse.Namespace) -> int:
    from asrtune.analysis.audio_use import audio_use
    from asrtune.analysis.cka import sample_indices
    from asrtune.data.features import FeatureDataset
    from asrtune.data.manifest import read_manifest
    from asrtune.report import print_table
    from asrtune.runs.load import load_model

    loaded = load_model(args.model)
    utterances = read_manifest(args.data)
    chosen = sample_indices(len(utterances), args.utterances or None, args.seed)
    dataset = FeatureDataset([utterances[i] for i in chosen], loaded.processor, multilingual=loaded.multilingual,
                             language=args.language)
    result = audio_use(loaded, dataset, seed=args.seed)
    rows = [["own audio", f"{result.loss['own']:.4f}", "", ""]]
    for name, label in (("shuffled", "another clip's audio"), ("silence", "silence")):
        mean, interval = result.gap[name]
        rows.append([label, f"{result.loss[name]:.4f}", f"{mean:+.4f}",
                     f"[{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else "-"])
    out = sys.stderr if args.json else sys.stdout
    print_table(["audio", "loss per token", "gap to own", "95% CI"], rows, file=out)
    print(f"{result.utterances} utterances, {result.tokens} reference tokens: the model "
          f"{'uses' if result.uses_audio else 'shows no sign of using'} its audio", file=out)
    if args.json:
        print(json.dumps(result.as_dict()))
    return 0
