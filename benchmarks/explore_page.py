"""``asrtune explore``, measured: the command's wall time, and its page opened and filtered in chromium.

    python benchmarks/explore_page.py runs/demo/run [--screenshot docs/explore.png]
    python benchmarks/explore_page.py --synthetic 1000 [--work-dir runs/explore-synthetic]

Times ``asrtune explore INPUT... --out PAGE`` as a subprocess (imports included, as a user waits for it),
then opens the page in Debian's chromium through Playwright (``executable_path``; nothing downloaded)
and times the load event plus a click on the first filter with rows ("regressions" when there are
any), ``--repeats`` times. ``--synthetic N``
first writes a manifest of N generated clips and two saved evaluations of it (before: every third
hypothesis has a substitution; after: a seeded tenth of them fixed and another tenth broken), which the
command then reads. ``--screenshot`` saves the page's top (``--set``: the set shown; ``--width``,
``--height``: the window) as a PNG in 64 colours: the README's picture is made this way.

Numbers only; nothing here asserts on seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from asrtune.explore.sources import save_evaluation

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()


def synthetic(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """A manifest of ``n`` generated clips (0.3-0.6 s) and two saved evaluations of it; returns the saves."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows, before, after = [], [], []
    for i in range(n):
        seconds = 0.3 + 0.3 * rng.random()
        clip = folder / "clips" / f"s{i}.wav"
        clip.parent.mkdir(exist_ok=True)
        sf.write(str(clip), 0.1 * np.sin(np.arange(int(16000 * seconds)) * (0.05 + 0.001 * (i % 50))), 16000)
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12)))
        words = text.split()
        first = list(words)
        if i % 3 == 0:
            first[rng.randrange(len(words))] = rng.choice(WORDS)
        second = list(words) if rng.random() < 0.1 else list(first)
        if rng.random() < 0.1:
            second[rng.randrange(len(words))] = "oops"
        rows.append({"id": f"s{i}", "audio": f"clips/{clip.name}", "text": text, "speaker": f"spk{i % 8}"})
        before.append({"id": f"s{i}", "reference": text, "hypothesis": " ".join(first), "truncated": False})
        after.append({"id": f"s{i}", "reference": text, "hypothesis": " ".join(second), "truncated": False})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    saves = []
    for name, utterances in (("before", before), ("after", after)):
        save_evaluation(folder / f"{name}.json", {"model": f"synthetic {name}", "scoring_language": "en"},
                        utterances, data=manifest, terms=None)
        saves.append(folder / f"{name}.json")
    return saves


def _shrink(png: Path) -> None:
    """The screenshot in 64 colours (a third of the bytes; text and the diff's colours survive)."""
    from PIL import Image

    with Image.open(png) as image:
        image.convert("RGB").quantize(colors=64).save(png, optimize=True)


def command_seconds(inputs: list[str], page: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "asrtune", "explore", *inputs, "--out", str(page)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def browser_seconds(
    page: Path, repeats: int, screenshot: Path | None, view: str | None, size: tuple[int, int]
):
    """Seconds from navigation to the first set's first filter that selects rows (regressions, when any)
    applied, per repeat (a fresh tab each time)."""
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        for _ in range(repeats):
            tab = browser.new_page(viewport={"width": size[0], "height": size[1]})
            started = time.perf_counter()
            tab.goto(page.resolve().as_uri())
            tab.click("section.view:not([hidden]) [data-filter]:not([data-filter=all]):not([disabled])")
            tab.eval_on_selector("section.view:not([hidden])", "s => s.dataset.shown")
            times.append(time.perf_counter() - started)
            tab.close()
        if screenshot is not None:
            tab = browser.new_page(viewport={"width": size[0], "height": size[1]})
            tab.goto(page.resolve().as_uri())
            if view is not None:
                label = next(
                    o
                    for o in tab.eval_on_selector_all("#view-picker option", "o => o.map(e => e.text)")
                    if f" · {view} (" in o
                )
                tab.select_option("#view-picker", label=label)
            tab.click("section.view:not([hidden]) .rows article.utt:nth-child(2) .line.ref")
            tab.wait_for_function("() => document.querySelector('section.view:not([hidden]) audio').readyState >= 1")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(screenshot))
            _shrink(screenshot)
        browser.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "inputs", nargs="*", help="what asrtune explore reads (run folder, saved evaluations, ...)"
    )
    parser.add_argument(
        "--synthetic", type=int, default=0, help="write and use a synthetic set of N utterances"
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="where the page (and a synthetic set) go")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument(
        "--set", dest="view", default=None, help="the set shown in the screenshot (e.g. test)"
    )
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="explore-bench-"))
    inputs = (
        [str(p) for p in synthetic(work / "synthetic", args.synthetic)] if args.synthetic else args.inputs
    )
    if not inputs:
        parser.error("give inputs or --synthetic N")
    page = work / "explore.html"
    command = command_seconds(inputs, page)
    opened = browser_seconds(page, args.repeats, args.screenshot, args.view, (args.width, args.height))
    result = {
        "inputs": inputs,
        "page": str(page),
        "page_mb": round(page.stat().st_size / 1e6, 2),
        "command_seconds": round(command, 2),
        "open_and_filter_seconds": [round(t, 2) for t in opened],
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"asrtune explore: {command:.2f} s -> {page} ({result['page_mb']} MB)")
        print("opened and filtered in chromium: " + ", ".join(f"{t:.2f} s" for t in opened))


if __name__ == "__main__":
    main()
