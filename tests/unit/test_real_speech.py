"""The real-English general set: transcripts cleaned, prompts decoded, drops counted by reason.

The Asterisk packages are mimicked with a small tree (or ``.deb`` files) holding G.722 prompts
encoded here with PyAV, so the whole path runs offline and the expected output is known.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrtune.data import real_speech
from asrtune.data.manifest import read_manifest
from asrtune.data.real_speech import (SOUNDS_DIR, TEXT_PACKAGE, TRANSCRIPTS, build_real_english, clean_transcript,
                                      decode_g722, parse_transcripts)
from asrtune.errors import AsrtuneError

av = pytest.importorskip("av")

TRANSCRIPT_TEXT = """\
; Asterisk prompts (a comment)
agent-pass: Please enter your password followed by the pound key.
auth-thankyou: Thank you.
beep: [this is a simple beep tone]
conf-now-muted: You are now muted. (note: spoken quickly)
vm-star-cancel: Press * to cancel.
digits/5: five
missing-audio: This prompt has no recording.
tiny: Hi.

"""
SECONDS = {"agent-pass": 1.5, "auth-thankyou": 0.6, "beep": 0.3, "conf-now-muted": 1.0, "vm-star-cancel": 1.0,
           "digits/5": 0.4, "tiny": 0.05}


def _write_g722(path: Path, seconds: float, frequency: float = 440.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * 16000)) / 16000
    samples = (0.3 * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)
    with av.open(str(path), "w", format="g722") as container:
        stream = container.add_stream("g722", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def _package_tree(root: Path) -> Path:
    """The two packages' files as ``dpkg-deb -x`` leaves them under ``root``."""
    for key, seconds in SECONDS.items():
        _write_g722(root / SOUNDS_DIR / f"{key}.g722", seconds)
    doc = root / "usr/share/doc" / TEXT_PACKAGE / TRANSCRIPTS
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(TRANSCRIPT_TEXT)
    return root


def test_transcripts_parse_and_clean():
    prompts = {p.key: p.text for p in parse_transcripts(TRANSCRIPT_TEXT)}
    assert "; Asterisk prompts (a comment)" not in prompts.values()
    assert prompts["digits/5"] == "five"
    assert len(prompts) == 8
    assert clean_transcript(prompts["beep"]) == ("", "non-speech")
    assert clean_transcript(prompts["conf-now-muted"]) == ("You are now muted.", None)
    assert clean_transcript(prompts["vm-star-cancel"])[1] == "keypad symbol"
    assert clean_transcript("<silence> Goodbye, ") == ("Goodbye", None)


def test_g722_decodes_to_16khz_samples(tmp_path):
    _write_g722(tmp_path / "a.g722", 1.25)
    samples = decode_g722(tmp_path / "a.g722")
    assert samples.dtype == np.float32
    assert abs(samples.size - 20000) <= 32  # codec delay at most a frame
    assert 0.25 < float(np.abs(samples).max()) < 0.35


def test_build_from_an_unpacked_tree_keeps_speech_and_counts_every_drop(tmp_path):
    source = _package_tree(tmp_path / "tree")
    report = build_real_english(tmp_path / "out", source=source, fetch=False)
    rows = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert [u.text for u in rows] == ["Please enter your password followed by the pound key.", "Thank you.",
                                      "You are now muted."]
    assert report["kept"] == 3
    assert report["dropped_by_reason"] == {"non-speech": 1, "keypad symbol": 1, "isolated digits": 1,
                                           "no audio": 1, "too short": 1}
    for utterance in rows:
        audio, rate = sf.read(utterance.audio)
        assert rate == 16000
        assert utterance.duration == pytest.approx(audio.size / 16000)
        assert utterance.voice == real_speech.SPEAKER and utterance.language == "en"
    assert rows[0].duration == pytest.approx(SECONDS["agent-pass"], abs=0.01)
    assert (tmp_path / "out" / "report.json").is_file()


def test_limit_keeps_the_first_prompts(tmp_path):
    source = _package_tree(tmp_path / "tree")
    report = build_real_english(tmp_path / "out", source=source, fetch=False, limit=2)
    assert report["kept"] == 2


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_build_from_deb_files(tmp_path):
    tree = _package_tree(tmp_path / "tree")
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN" / "control").write_text("Package: fake-asterisk-sounds\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: test <t@example.org>\nDescription: test\n")
    debs = tmp_path / "debs"
    debs.mkdir()
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(debs / "sounds.deb")], check=True,
                   capture_output=True)
    report = build_real_english(tmp_path / "out", source=debs, fetch=False)
    assert report["kept"] == 3 and report["source"].startswith("unpacked the .deb files")


def test_nothing_installed_and_no_fetch_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(real_speech, "SYSTEM_ROOT", tmp_path / "empty-system")
    with pytest.raises(AsrtuneError, match="apt-get install asterisk-core-sounds-en-g722"):
        build_real_english(tmp_path / "out", fetch=False)


def test_a_source_without_prompts_is_an_error(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(AsrtuneError, match="holds neither"):
        build_real_english(tmp_path / "out", source=tmp_path / "nothing", fetch=False)
