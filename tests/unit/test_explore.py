"""``asrtune explore`` without a browser: diffs, flags, a real run's numbers, inputs, errors, the HTML file.

The page in a real browser is tested in ``test_explore_browser.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import jiwer
import pytest
import soundfile as sf
from explore_run import TEST_TEXTS, make_explore_run, synthetic_set
from whisper_normalizer.english import EnglishTextNormalizer

from asrtune.cli import main
from asrtune.errors import AsrtuneError
from asrtune.evaluation.bootstrap import utterance_counts
from asrtune.explore import build_page, parse_data, start_server, write_page
from asrtune.explore.align import align_all, hypothesis_flags
from asrtune.explore.page import audio_links, render
from asrtune.explore.sources import SetSource
from asrtune.explore.view import build_view

NORMALISE = EnglishTextNormalizer()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_explore_run(tmp_path_factory.mktemp("explore"))


def _words(text: str) -> list[str]:
    return NORMALISE(text).split()


def _errors(reference: str, hypothesis: str) -> int:
    """Word errors of one pair, straight from jiwer (the page's numbers must agree)."""
    out = jiwer.process_words(" ".join(_words(reference)), " ".join(_words(hypothesis)))
    return out.substitutions + out.deletions + out.insertions


def _rows(run: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run / "evaluation" / f"{name}.jsonl").read_text().splitlines()]


# --- diffs and flags --------------------------------------------------------------------------------


def test_diff_marks_substitutions_deletions_insertions_as_jiwer_counts_them():
    refs = ["the cat sat on the mat", "open the door", "good morning", ""]
    hyps = ["the bat sat mat today", "", "good morning", "thank you"]
    alignments = align_all([_words(r) for r in refs], [_words(h) for h in hyps])
    first = [(t.op, t.ref, t.hyp) for t in alignments[0].tokens]
    # jiwer aligns "on the mat" with "mat today": two substitutions and a deletion
    assert first == [
        ("=", "the", "the"),
        ("s", "cat", "bat"),
        ("=", "sat", "sat"),
        ("s", "on", "mat"),
        ("s", "the", "today"),
        ("d", "mat", ""),
    ]
    assert [(t.op, t.ref) for t in alignments[1].tokens] == [("d", "open"), ("d", "the"), ("d", "door")]
    assert [(t.op, t.ref) for t in alignments[2].tokens] == [
        ("=", "good morning")
    ]  # a run of hits is one token
    assert [(t.op, t.hyp) for t in alignments[3].tokens] == [("i", "thank"), ("i", "you")]
    counts = utterance_counts(refs, hyps, "en")  # the counts WER is made of (empty reference left out)
    assert [a.errors for a in alignments[:3]] == counts.errors.tolist()
    assert alignments[0].pairs == (("cat", "bat"), ("on", "mat"), ("the", "today"))
    assert alignments[0].hits == {0, 2}


def test_term_words_are_marked_in_the_diff():
    terms = [("metformin",), ("otitis", "media")]
    [alignment] = align_all(
        [_words("start metformin for otitis media")], [_words("start met for otitis media")], terms
    )
    marked = [(t.op, t.ref, t.hyp, t.term) for t in alignment.tokens]
    assert marked == [
        ("=", "start", "start", False),
        ("s", "metformin", "met", True),
        ("=", "for", "for", False),
        ("=", "otitis media", "otitis media", True),
    ]


def test_flags_follow_the_hallucination_rules():
    def flags(ref: str, hyp: str, **kw) -> list[str]:
        return hypothesis_flags(ref, hyp, _words(ref), _words(hyp), **kw)

    assert flags("thank you", "thank you thank you thank you") == ["loop", "run-on"]
    assert flags("no no no no", "no no no no") == []  # the reference says it too
    assert flags("a b c", "a b c d e f g") == ["run-on"]
    assert flags("hello there", "I'm sorry, I cannot transcribe this audio.") == ["run-on", "refusal"]
    assert flags("hello there", "hello there", truncated=True) == ["truncated"]


def _source(refs, before, after, **kw) -> SetSource:
    return SetSource(
        source="s",
        name="set",
        role="target",
        language="en",
        ids=tuple(f"u{i}" for i in range(len(refs))),
        references=tuple(refs),
        after=tuple(after),
        before=None if before is None else tuple(before),
        before_label="base",
        after_label="tuned",
        **kw,
    )


def test_categories_substitutions_and_words_gained_and_lost_by_hand():
    refs = ["red green blue", "one fish two fish", "just right", "still wrong here"]
    before = ["red grin blue", "one fish two fish", "just right", "still long here"]
    after = ["red green blue", "one dish two fish", "just right", "still song here"]
    view = build_view(_source(refs, before, after), {})
    assert [r["cat"] for r in view["rows"]] == ["improvement", "regression", "correct", "unchanged"]
    assert [r["delta"] for r in view["rows"]] == [pytest.approx(-1 / 3), 0.25, 0.0, 0.0]
    summary = view["summary"]
    assert summary["subs"]["before"] == [["green", "grin", 1], ["wrong", "long", 1]]
    assert summary["subs"]["after"] == [["fish", "dish", 1], ["wrong", "song", 1]]
    assert summary["gained"] == [["green", 1]] and summary["lost"] == [["fish", 1]]
    assert view["options"]["categories"] == [
        ["regression", "regressions", 1],
        ["improvement", "improvements", 1],
        ["unchanged", "unchanged errors", 1],
        ["correct", "correct before and after", 1],
    ]
    alone = build_view(_source(refs, None, after), {})  # one model: no change to speak of
    assert [r["cat"] for r in alone["rows"]] == ["correct", "errors", "correct", "errors"]
    assert not alone["has_before"] and all(r["delta"] is None for r in alone["rows"])


# --- a real run -------------------------------------------------------------------------------------


def test_a_runs_page_shows_every_set_it_scored_with_the_numbers_it_recorded(run_dir):
    page = build_page([run_dir])
    results = json.loads((run_dir / "results.json").read_text())
    assert [v["name"] for v in page.views] == list(results["evaluation"]["sets"])
    assert [v["name"] for v in page.views] == ["eval", "test", "everyday_heldout_voice", "nonspeech"]
    test = next(v for v in page.views if v["name"] == "test")
    recorded = results["evaluation"]["sets"]["test"]  # written by asrtune.training.evidence.set_report
    metrics = {m["name"].split(" (")[0]: m for m in test["summary"]["metrics"]}
    assert metrics["WER"]["after"] == recorded["wer"] and metrics["WER"]["before"] == recorded["base"]["wer"]
    assert metrics["WER"]["after_ci"] == recorded["wer_ci95"]
    assert metrics["WER"]["before_ci"] == recorded["base"]["wer_ci95"]
    assert metrics["WER"]["delta_ci"] == recorded["delta_wer_ci95"]
    assert metrics["CER"]["after"] == recorded["cer"] and metrics["CER"]["before"] == recorded["base"]["cer"]
    low, high = metrics["CER"]["after_ci"]
    assert low <= recorded["cer"] <= high
    assert metrics["term recall"]["after"] == recorded["term_recall"]
    assert metrics["term recall"]["before"] == recorded["base"]["term_recall"]
    assert metrics["term insertions"]["after"] == recorded["term_insertions"]

    rows = _rows(run_dir, "test")
    assert [r["id"] for r in test["rows"]] == [r["id"] for r in rows]
    assert [r["ref"] for r in test["rows"]] == TEST_TEXTS
    for shown, row in zip(test["rows"], rows, strict=True):
        before, after = _errors(row["reference"], row["base"]), _errors(row["reference"], row["hypothesis"])
        assert (shown["before"]["errors"], shown["after"]["errors"]) == (before, after)
        expected = (
            "regression"
            if after > before
            else "improvement"
            if after < before
            else ("unchanged" if after else "correct")
        )
        assert shown["cat"] == expected
    assert sum(r["after"]["errors"] for r in test["rows"]) == (
        recorded["substitutions"] + recorded["deletions"] + recorded["insertions"]
    )
    cats = {r["cat"] for r in test["rows"]}
    assert {"regression", "improvement", "unchanged"} <= cats, "the run no longer makes every kind of row"

    for i, row in enumerate(test["rows"]):  # audio and fields come from the manifest the config names
        assert Path(row["audio"]).name == f"test-{i}.wav"
        assert row["duration"] == pytest.approx(sf.info(row["audio"]).duration)
        assert row["fields"] == {"voice": ["en-us", "en-gb"][i % 2]}
    assert test["options"]["fields"] == [["voice", [["en-gb", 3], ["en-us", 3]]]]
    evening = test["rows"][1]  # "good evening": the term is missed when the model says "morning"
    if "evening" in _words(rows[1]["reference"]) and "evening" not in _words(rows[1]["hypothesis"]):
        assert evening["after"]["misses"] == ["evening"] and "evening" in evening["terms"]

    truncated = set(results["final"]["hit_max_new_tokens_ids"])
    eval_view = page.views[0]
    assert {r["id"] for r in eval_view["rows"] if "truncated" in r["after"]["flags"]} == truncated
    assert not any("truncated" in r["before"]["flags"] for r in eval_view["rows"])
    assert any("the truncated flag" in note and "before: not recorded" in note for note in eval_view["notes"])
    nonspeech = page.views[-1]
    assert all(Path(r["audio"]).parent == run_dir / "nonspeech" for r in nonspeech["rows"])
    assert nonspeech["summary"]["metrics"][0]["name"] == "words per clip"


def test_one_set_of_a_run_and_only_some_sets(run_dir):
    assert [v["name"] for v in build_page([run_dir / "evaluation" / "test.jsonl"]).views] == ["test"]
    assert [v["name"] for v in build_page([run_dir], sets=("eval", "nonspeech")).views] == [
        "eval",
        "nonspeech",
    ]


def test_a_sweep_folder_and_picking_its_runs(run_dir, tmp_path):
    for cell in ("medical/full/seed-0", "medical/lora/seed-0", "medical/full/seed-1.stale-abc"):
        shutil.copytree(
            run_dir, tmp_path / "sweep" / "runs" / cell, ignore=shutil.ignore_patterns("checkpoints")
        )
    (tmp_path / "sweep" / "sweep.json").write_text("{}")
    page = build_page([tmp_path / "sweep"], sets=("test",))
    assert [v["source"] for v in page.views] == [
        "medical/full/seed-0",
        "medical/lora/seed-0",
    ]  # not the stale one
    assert [
        v["source"] for v in build_page([tmp_path / "sweep"], picks=("*/lora/*",), sets=("test",)).views
    ] == ["medical/lora/seed-0"]
    with pytest.raises(AsrtuneError, match="matches none of .*medical/full/seed-0"):
        build_page([tmp_path / "sweep"], picks=("*/adapter/*",))


def test_saved_evaluations_before_and_after(tiny_model_dir, tiny_data, tmp_path, capsys):
    manifest = tiny_data[1]
    for name in ("before", "after"):
        assert (
            main(
                [
                    "evaluate",
                    str(tiny_model_dir),
                    "--data",
                    str(manifest),
                    "--batch-size",
                    "3",
                    "--max-new-tokens",
                    "2",
                    "--save",
                    str(tmp_path / f"{name}.json"),
                ]
            )
            == 0
        )
    saved = json.loads((tmp_path / "after.json").read_text())
    assert saved["format"] == "asrtune-evaluation" and saved["data"] == str(manifest.resolve())
    assert [u["id"] for u in saved["utterances"]] == ["u0", "u1", "u2"]
    assert saved["wer"] == pytest.approx(
        jiwer.wer(  # the record's scores, and the hypotheses that make them
            [" ".join(_words(u["reference"])) for u in saved["utterances"]],
            [" ".join(_words(u["hypothesis"])) for u in saved["utterances"]],
        )
    )
    page = build_page([tmp_path / "before.json", tmp_path / "after.json"])
    [view] = page.views
    assert view["has_before"] and view["before_label"] == view["after_label"] == str(tiny_model_dir)
    assert [r["id"] for r in view["rows"]] == ["u0", "u1", "u2"] and all(r["audio"] for r in view["rows"])
    assert all(r["cat"] in ("unchanged", "correct") for r in view["rows"])  # the same model twice
    assert not view["notes"]  # evaluate --save records every truncated hypothesis
    capped = {u["id"] for u in saved["utterances"] if u["truncated"]}
    assert {r["id"] for r in view["rows"] if "truncated" in r["after"]["flags"]} == capped
    [alone] = build_page([tmp_path / "after.json"]).views
    assert not alone["has_before"]


# --- bad input --------------------------------------------------------------------------------------


def test_bad_inputs_are_one_clear_error(run_dir, tmp_path):
    unfinished, empty_run = tmp_path / "unfinished", tmp_path / "empty_run"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "config.yaml").write_text("model: x\n")
    (empty_run / "evaluation").mkdir(parents=True)
    (tmp_path / "other.json").write_text('{"wer": 0.5}')
    (tmp_path / "empty").mkdir()
    _, before, after = synthetic_set(tmp_path / "syn", n=3)
    third = tmp_path / "third.json"
    third.write_text(after.read_text())
    changed = json.loads(after.read_text())
    changed["utterances"][0]["reference"] = "something else"
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    del changed["utterances"][1]["hypothesis"]
    (tmp_path / "broken.json").write_text(json.dumps(changed))
    cases = [
        ([tmp_path / "missing"], "not found"),
        ([tmp_path / "empty"], "neither a run folder"),
        ([tmp_path / "other.json"], "not a saved evaluation"),
        (
            [unfinished],
            "no evaluation/ folder; a run writes evaluation/<set>.jsonl when its final evaluation",
        ),
        ([empty_run], "no set to show"),
        ([before, after, third], "3 saved evaluations of .*give one .* or two"),
        ([before, tmp_path / "changed.json"], "hold different utterances"),
        ([tmp_path / "broken.json"], "broken.json: utterance 2 has no hypothesis"),
        ([run_dir, "--set", "nope"], "no set to show"),
    ]
    for args, message in cases:
        with pytest.raises(AsrtuneError, match=message):
            if "--set" in args:
                build_page([args[0]], sets=(args[2],))
            else:
                build_page(args)


def test_data_overrides_give_audio_and_fields(run_dir, tmp_path):
    manifest = tmp_path / "voices.jsonl"
    test_manifest = run_dir.parent / "data" / "test.jsonl"
    rows = [json.loads(line) for line in test_manifest.read_text().splitlines()]
    manifest.write_text(
        "".join(
            json.dumps({**r, "audio": str(test_manifest.parent / r["audio"]), "speaker": f"s{i % 3}"}) + "\n"
            for i, r in enumerate(rows)
        )
    )
    named = build_page([run_dir], data=[parse_data(f"test={manifest}")], sets=("test",)).views[0]
    assert [r["fields"]["speaker"] for r in named["rows"]] == ["s0", "s1", "s2", "s0", "s1", "s2"]
    matched = build_page([run_dir], data=[parse_data(str(manifest))], sets=("test", "eval"))
    assert (
        "speaker" in matched.views[1]["rows"][0]["fields"]
        and "speaker" not in matched.views[0]["rows"][0]["fields"]
    )
    with pytest.raises(AsrtuneError, match="no set's utterances"):
        build_page([run_dir], data=[parse_data(str(manifest))], sets=("eval",))
    with pytest.raises(AsrtuneError, match="no set is named other"):
        build_page([run_dir], data=[parse_data(f"other={manifest}")])
    with pytest.raises(AsrtuneError, match="manifest not found"):
        parse_data(str(tmp_path / "missing.jsonl"))


# --- the file -----------------------------------------------------------------------------------------


def test_the_page_is_one_offline_file_and_transcripts_cannot_break_it(tmp_path):
    refs = ["</script><script>alert(1)</script> & <b>bold</b>", "plain words"]
    view = build_view(_source(refs, refs, ["</script>", "plain words"]), {})
    html = render(type("P", (), {"views": [view]})(), {}, title="t")
    assert html.count("</script>") == 2  # the index and the script's own ends; the texts are escaped
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in html
    index = re.search(r'<script type="application/json" id="explore-index">(.*?)</script>', html, re.S).group(
        1
    )
    assert json.loads(index)["views"][0]["rows"][0]["q"].startswith("u0\n</script>")
    attributes = re.findall(r'(?:src|href|action)\s*=\s*"([^"]*)"', html)
    assert not [a for a in attributes if re.match(r"[a-z]+:", a)], attributes  # nothing external
    assert "default-src 'none'" in html and "<link" not in html and "@import" not in html


def test_audio_is_linked_relative_to_the_page_or_embedded_under_a_limit(tmp_path):
    clip = tmp_path / "data" / "my clip #1.wav"
    clip.parent.mkdir()
    sf.write(str(clip), [0.0] * 1600, 16000)
    assert audio_links([str(clip)], tmp_path / "out" / "page.html") == {
        str(clip): "../data/my%20clip%20%231.wav"
    }
    [embedded] = audio_links([str(clip)], tmp_path / "page.html", embed=True).values()
    assert embedded.startswith("data:audio/wav;base64,UklGR")
    with pytest.raises(AsrtuneError, match="over the embedding limit of 0.001 MB"):
        audio_links([str(clip)], tmp_path / "page.html", embed=True, limit_mb=0.001)


def test_the_command_writes_the_page_and_says_where(run_dir, tmp_path, capsys):
    assert main(["explore", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert (run_dir / "explore.html").is_file() and f"page: {run_dir / 'explore.html'}" in out
    assert "| " + f"{run_dir} · test" in out
    assert (
        main(["explore", str(run_dir), "--out", str(tmp_path / "p.html"), "--set", "test", "--embed-audio"])
        == 0
    )
    html = (tmp_path / "p.html").read_text()
    assert html.count('data-src="data:audio/wav;base64,') == len(TEST_TEXTS)
    errors = {
        (str(tmp_path / "nothing"),): f"not found: {tmp_path / 'nothing'}",
        (str(run_dir), "--out", str(tmp_path)): f"{tmp_path} is a folder: name the page's file",
        (str(run_dir), "--serve", "--port", "70000"): "--port 70000: a port is 0 (any free one) to 65535",
    }
    for args, message in errors.items():
        capsys.readouterr()
        assert main(["explore", *args]) == 2
        [line] = capsys.readouterr().err.strip().splitlines()  # one line, no traceback
        assert line.startswith(f"asrtune: error: {message}")


def test_serve_gives_the_page_and_its_clips_and_nothing_else(run_dir, tmp_path):
    page = build_page([run_dir], sets=("test",))
    out = write_page(page, tmp_path / "site" / "page.html")
    server = start_server(out, page.audio_files, port=0)
    try:
        assert urllib.request.urlopen(server.url).read() == out.read_bytes()
        link = re.search(r'data-src="([^"]+)"', out.read_text()).group(1)
        clip = urllib.request.urlopen(urllib.request.Request(server.url.rsplit("/", 1)[0] + "/" + link))
        assert clip.read() == Path(page.audio_files[0]).read_bytes()
        ranged = urllib.request.urlopen(
            urllib.request.Request(server.url.rsplit("/", 1)[0] + "/" + link, headers={"Range": "bytes=4-11"})
        )
        assert ranged.status == 206 and ranged.read() == Path(page.audio_files[0]).read_bytes()[4:12]
        other = server.url.rsplit("/", 1)[0] + "/../run/config.yaml"
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(other)
    finally:
        server.close()


def test_the_demo_writes_its_page_and_prints_where(run_dir, tmp_path, monkeypatch, capsys):
    from asrtune import demo

    def fake_train(config, out):
        shutil.copytree(run_dir, out)
        return json.loads((out / "results.json").read_text())

    data = run_dir.parent / "data"
    monkeypatch.setattr(
        demo,
        "speak_demo_data",
        lambda *a, **k: {
            "train": data / "train.jsonl",
            "validation": data / "train.jsonl",
            "test": data / "test.jsonl",
            "general": data / "general.jsonl",
        },
    )
    monkeypatch.setattr(demo, "train", fake_train)
    demo.run_demo(tmp_path / "demo", real_en=None, settings=demo.DemoSettings(steps=1))
    page = tmp_path / "demo" / "explore.html"
    assert page.is_file() and f"(asrtune explore): {page}" in capsys.readouterr().out
    assert 'data-id="u1"' in page.read_text()
