"""espeak-ng synthesis into a manifest."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf

from conftest import espeak_or_skip

from asrtune.data import synth
from asrtune.data.manifest import read_manifest
from asrtune.data.synth import SynthSettings, read_text_lines, synthesise_lines
from asrtune.errors import AsrtuneError


def test_synthesise_lines_writes_16k_mono_audio_and_a_manifest(tmp_path):
    espeak_or_skip()
    lines = ["Good morning.", "Please open the door."]
    manifest = synthesise_lines(
        lines, tmp_path / "out", settings=SynthSettings(seed=3), prefix="dict", language="en", progress=False
    )
    assert manifest == tmp_path / "out" / "manifest.jsonl"
    rows = read_manifest(manifest)
    assert [r.id for r in rows] == ["dict-00000", "dict-00001"]
    assert [r.text for r in rows] == lines
    assert all(r.language == "en" for r in rows)
    for row in rows:
        info = sf.info(row.audio)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert row.duration == pytest.approx(info.frames / 16000, abs=1e-4)
        assert 0.3 < row.duration < 5.0
    assert rows[1].duration > rows[0].duration  # the longer sentence takes longer to say


def test_existing_audio_is_not_synthesised_again(tmp_path):
    espeak_or_skip()
    manifest = synthesise_lines(["one two three"], tmp_path, progress=False)
    audio = read_manifest(manifest)[0].audio
    assert Path(audio).name.startswith("utt-00000-en-us-")
    stamp = Path(audio).stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("espeak-ng should not run again")

    original = synth.synthesise
    synth.synthesise = fail
    try:
        again = read_manifest(synthesise_lines(["one two three"], tmp_path, progress=False))
    finally:
        synth.synthesise = original
    assert again[0].audio == audio
    assert Path(audio).stat().st_mtime_ns == stamp


def test_audio_is_never_reused_for_another_line(tmp_path):
    """An edited text file (or a re-cut split) puts another line under the same id: it is spoken anew."""
    espeak_or_skip()
    first = read_manifest(synthesise_lines(["one two three"], tmp_path, progress=False))[0]
    second = read_manifest(synthesise_lines(["four five six seven eight nine ten"], tmp_path, progress=False))[0]
    assert first.id == second.id and first.audio != second.audio
    assert second.duration > first.duration  # the new line's own audio, not the first line's
    assert Path(first.audio).is_file()  # the earlier audio is left where it was


def test_speaking_rate_changes_duration(tmp_path):
    espeak_or_skip()
    text = ["the quick brown fox jumps over the lazy dog"]
    slow = read_manifest(
        synthesise_lines(
            text, tmp_path / "slow", settings=SynthSettings(rate_range=(100, 100)), progress=False
        )
    )[0]
    fast = read_manifest(
        synthesise_lines(
            text, tmp_path / "fast", settings=SynthSettings(rate_range=(300, 300)), progress=False
        )
    )[0]
    assert slow.duration > 1.5 * fast.duration


def test_unknown_voice_is_a_user_error(tmp_path):
    espeak_or_skip()
    with pytest.raises(AsrtuneError, match="espeak-ng failed for voice 'nonexistentvoice'"):
        synthesise_lines(
            ["hello"], tmp_path, settings=SynthSettings(voice="nonexistentvoice"), progress=False
        )


def test_missing_espeak_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    assert synth.espeak_available() is False
    with pytest.raises(AsrtuneError, match="espeak-ng is not installed"):
        synthesise_lines(["hello"], tmp_path, progress=False)


def test_read_text_lines(tmp_path):
    (tmp_path / "t.txt").write_text("  first line \n\n\tsecond\n   \nthird", encoding="utf-8")
    assert read_text_lines(tmp_path / "t.txt") == ["first line", "second", "third"]
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(AsrtuneError, match="no text lines"):
        read_text_lines(tmp_path / "blank.txt")
    with pytest.raises(AsrtuneError, match="text file not found"):
        read_text_lines(tmp_path / "missing.txt")
