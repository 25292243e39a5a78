"""The explore page in a real headless browser: Playwright driving Debian's ``chromium``.

``make install`` installs chromium where root or sudo allows; without it (or without playwright) these
tests skip and say why. Playwright never downloads a browser here (``executable_path``). Every request
the page makes is recorded, and any whose URL is not the page's own (``file://``, or the local server)
is aborted and fails the test: nothing leaves the machine.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import jiwer
import pytest
import soundfile as sf
from explore_run import make_explore_run, synthetic_set
from whisper_normalizer.english import EnglishTextNormalizer

from asrtune.explore import build_page, start_server, write_page

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NORMALISE = EnglishTextNormalizer()
VISIBLE = "section.view:not([hidden])"


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]'; make install does)")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        pytest.skip(
            "Debian's chromium is not installed: make install installs it where root or sudo allows "
            "(apt-get install chromium)"
        )
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        except Error as error:
            pytest.skip(f"chromium did not start: {error}")
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_explore_run(tmp_path_factory.mktemp("explore-browser"))


class Visit:
    """A page in a fresh browser context that records every request, console error and page error;
    a request to anything but ``local`` (or a ``data:`` URI) is aborted and recorded as ``blocked``."""

    def __init__(self, browser, local: str = "file://"):
        self.local, self.requests, self.blocked, self.errors = local, [], [], []
        self.context = browser.new_context()
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _route(self, route) -> None:
        url = route.request.url
        if url.startswith((self.local, "data:")):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def check_nothing_left(self) -> None:
        assert not self.blocked, f"requests that would have left the machine: {self.blocked}"
        assert not self.errors, self.errors
        outside = [u for u in self.requests if not u.startswith((self.local, "data:"))]
        assert not outside, outside

    def close(self) -> None:
        self.context.close()

    # what the page shows, read from its DOM
    def visible_ids(self) -> list[str]:
        return self.page.eval_on_selector_all(
            f"{VISIBLE} article.utt:not([hidden])", "a => a.map(e => e.dataset.id)"
        )

    def click_filter(self, key: str) -> None:
        self.page.click(f"{VISIBLE} [data-filter={key}]")

    def audio_of(self, utt_id: str) -> dict:
        """Make the row current (which gives it its audio element), wait for the clip's metadata."""
        self.page.click(f'{VISIBLE} article[data-id="{utt_id}"] .line.ref')
        audio = self.page.wait_for_selector(f'{VISIBLE} article[data-id="{utt_id}"] audio', state="attached")
        self.page.wait_for_function("a => a.readyState >= 1 || a.error", arg=audio, timeout=10_000)
        return audio.evaluate(
            "a => ({ready: a.readyState, duration: a.duration, error: a.error && a.error.code})"
        )

    def substitutions(self, utt_id: str, model: str = "after") -> list[tuple[str, str]]:
        return [
            tuple(pair)
            for pair in self.page.eval_on_selector_all(
                f'{VISIBLE} article[data-id="{utt_id}"] .hyp.{model} .op-s',
                "spans => spans.map(s => [s.querySelector('del').textContent,"
                " s.querySelector('ins').textContent])",
            )
        ]


@pytest.fixture
def visit(browser):
    opened = []

    def open_page(url: str, local: str = "file://") -> Visit:
        v = Visit(browser, local)
        opened.append(v)
        v.page.goto(url)
        return v

    yield open_page
    for v in opened:
        v.close()


def _words(text: str) -> str:
    return " ".join(NORMALISE(text).split())


def _wer(reference: str, hypothesis: str) -> float:
    """One utterance's WER, from jiwer and Whisper's normaliser directly (not from asrtune)."""
    out = jiwer.process_words(_words(reference), _words(hypothesis))
    return (out.substitutions + out.deletions + out.insertions) / len(_words(reference).split())


def _first_substitution(rows: list[dict]) -> tuple[str, tuple[str, str]]:
    for row in rows:
        out = jiwer.process_words(_words(row["reference"]), _words(row["hypothesis"]))
        for chunk in out.alignments[0]:
            if chunk.type == "substitute":
                return row["id"], (
                    out.references[0][chunk.ref_start_idx],
                    out.hypotheses[0][chunk.hyp_start_idx],
                )
    raise AssertionError("no tuned hypothesis of the run has a substitution: the test needs one")


def test_a_runs_page_in_a_real_browser(run_dir, tmp_path, visit):
    out = write_page(build_page([run_dir]), tmp_path / "page.html")
    rows = [json.loads(line) for line in (run_dir / "evaluation" / "test.jsonl").read_text().splitlines()]
    manifest = [
        json.loads(line) for line in (run_dir.parent / "data" / "test.jsonl").read_text().splitlines()
    ]
    v = visit(out.as_uri())
    v.page.select_option("#view-picker", label=f"{run_dir} · test ({len(rows)})")

    assert v.visible_ids() == [r["id"] for r in rows]  # one row per utterance of the set
    rose = [r["id"] for r in rows if _wer(r["reference"], r["hypothesis"]) > _wer(r["reference"], r["base"])]
    fell = [r["id"] for r in rows if _wer(r["reference"], r["hypothesis"]) < _wer(r["reference"], r["base"])]
    assert rose and fell, "the run no longer has both regressions and improvements"
    v.click_filter("regression")
    assert v.visible_ids() == rose
    v.click_filter("improvement")
    assert v.visible_ids() == fell
    v.click_filter("all")

    clip = run_dir.parent / "data" / manifest[2]["audio"]
    audio = v.audio_of(rows[2]["id"])
    assert audio["error"] is None and audio["ready"] >= 1
    assert abs(audio["duration"] - sf.info(str(clip)).duration) < 0.1

    utt_id, pair = _first_substitution(rows)
    assert pair in v.substitutions(utt_id)
    v.check_nothing_left()


def test_the_served_page_plays_its_clips_from_localhost_only(run_dir, tmp_path, visit):
    page = build_page([run_dir], sets=("test",))
    out = write_page(page, tmp_path / "served" / "page.html")
    server = start_server(out, page.audio_files, port=0)
    try:
        v = visit(server.url, local=f"http://127.0.0.1:{server.httpd.server_address[1]}/")
        row = page.views[0]["rows"][0]
        audio = v.audio_of(row["id"])
        assert audio["error"] is None and abs(audio["duration"] - row["duration"]) < 0.1
        other = page.views[0]["rows"][1]["id"]
        v.page.click(f'{VISIBLE} article[data-id="{other}"] button.play')  # its player is made and plays
        playing = v.page.wait_for_selector(f'{VISIBLE} article[data-id="{other}"] audio', state="attached")
        v.page.wait_for_function("a => !a.paused || a.ended || a.title", arg=playing, timeout=10_000)
        assert playing.evaluate("a => a.title") == ""  # no "cannot play: ..."
        v.check_nothing_left()
    finally:
        server.close()


def test_embedded_audio_plays_from_the_page_alone(run_dir, tmp_path, visit):
    page = build_page([run_dir], sets=("test",))
    out = write_page(page, tmp_path / "embedded.html", embed=True)
    v = visit(out.as_uri())
    audio = v.audio_of(page.views[0]["rows"][1]["id"])
    assert audio["error"] is None and abs(audio["duration"] - page.views[0]["rows"][1]["duration"]) < 0.1
    assert [u for u in v.requests if not u.startswith("data:")] == [out.as_uri()]
    v.check_nothing_left()


def test_the_guard_would_catch_a_request_leaving_the_machine(browser):
    v = Visit(browser)
    try:
        v.page.goto("about:blank")
        v.page.evaluate("fetch('http://explore-test.invalid/x').catch(() => 0)")
        v.page.wait_for_timeout(200)
        assert v.blocked == ["http://explore-test.invalid/x"]
        with pytest.raises(AssertionError, match="would have left"):
            v.check_nothing_left()
    finally:
        v.close()


def test_a_thousand_utterances_open_and_filter_in_under_two_seconds(tmp_path, visit):
    manifest, before, after = synthetic_set(tmp_path, n=1000)
    started = time.perf_counter()
    page = build_page([before, after])
    out = write_page(page, tmp_path / "page.html")
    built = time.perf_counter() - started
    saved = {name: json.loads(path.read_text())["utterances"] for name, path in (("b", before), ("a", after))}
    rose = [
        a["id"]
        for b, a in zip(saved["b"], saved["a"], strict=True)
        if _wer(a["reference"], a["hypothesis"]) > _wer(b["reference"], b["hypothesis"])
    ]

    started = time.perf_counter()
    v = visit(out.as_uri())  # returns after the load event
    v.click_filter("regression")
    shown = v.visible_ids()
    opened_and_filtered = time.perf_counter() - started
    print(
        f"\n1,000 utterances: page built in {built:.2f} s ({out.stat().st_size / 1e6:.1f} MB); "
        f"opened and filtered in {opened_and_filtered:.2f} s"
    )
    assert shown == rose and len(rose) > 100
    assert opened_and_filtered < 2.0, f"opening and filtering took {opened_and_filtered:.2f} s"

    assert v.substitutions("s5") == [("hotel", "motel")]
    v.click_filter("all")
    v.page.fill(f"{VISIBLE} input.search", "MOTEL")
    assert v.visible_ids() == ["s5"]
    v.page.fill(f"{VISIBLE} input.search", "")
    v.page.select_option(f"{VISIBLE} select.field", "speaker=spk1")
    assert v.visible_ids() == [f"s{i}" for i in range(1, 1000, 4)]
    assert v.page.text_content(f"{VISIBLE} .shown") == "250 of 1000 shown"
    v.page.select_option(f"{VISIBLE} select.field", "")
    v.page.select_option(f"{VISIBLE} select.flag", "truncated:after")
    assert v.visible_ids() == ["s11"]
    v.page.select_option(f"{VISIBLE} select.flag", "")
    v.page.select_option(f"{VISIBLE} select.sort", "delta-desc")
    ordered = v.visible_ids()
    assert ordered[0] in rose and sorted(ordered) == sorted(r["id"] for r in saved["a"])
    v.page.keyboard.press("Escape")  # out of the sort menu: keys now move between rows
    v.page.keyboard.press("j")
    v.page.keyboard.press("j")
    v.page.keyboard.press("k")
    current = v.page.eval_on_selector_all(f"{VISIBLE} article.current", "a => a.map(e => e.dataset.id)")
    assert current == [ordered[0]]
    assert (
        v.page.locator(f'{VISIBLE} article[data-id="{ordered[0]}"] audio').count() == 1
    )  # its player is made
    v.check_nothing_left()
