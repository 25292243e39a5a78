"""Real recorded English speech from the system's package manager: a general set for forgetting.

Synthetic voices hide what fine-tuning does to a model on human speech, so a general set should
hold some. Debian (and Ubuntu) ship the Asterisk PBX prompts, read by one professional speaker
(Allison Smith, CC-BY-SA-3.0):

* ``asterisk-core-sounds-en-g722``: several hundred prompts, G.722 wideband (16 kHz);
* ``asterisk-core-sounds-en``: their transcripts (``core-sounds-en.txt``).

:func:`build_real_english` takes them from the installed system when they are there, otherwise
fetches the two ``.deb`` files with ``apt-get download`` (running ``apt-get update`` first when it
is root and the package lists lack them) and unpacks them with ``dpkg-deb -x`` into the output
folder, so nothing is installed system-wide. It decodes G.722 with PyAV (FFmpeg; installed with
asrtune's ``deploy`` extra) or the ``ffmpeg`` program, writes 16 kHz mono WAV, and a manifest whose
transcripts are cleaned of non-speech entries. Where none of that is possible it says exactly
what to install. It is a data-preparation step: training never fetches anything.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from asrtune.data.audio import SAMPLE_RATE
from asrtune.data.manifest import Utterance, write_manifest
from asrtune.data.debian import fetch_debs, unpack_debs
from asrtune.errors import AsrtuneError

__all__ = [
    "AUDIO_PACKAGE",
    "TEXT_PACKAGE",
    "SPEAKER",
    "Prompt",
    "parse_transcripts",
    "clean_transcript",
    "find_sources",
    "fetch_packages",
    "decode_g722",
    "build_real_english",
    "install_hint",
]

AUDIO_PACKAGE = "asterisk-core-sounds-en-g722"
TEXT_PACKAGE = "asterisk-core-sounds-en"
SPEAKER = "en_US_f_Allison"
SOUNDS_DIR = Path("usr/share/asterisk/sounds") / SPEAKER
TRANSCRIPTS = "core-sounds-en.txt"
SYSTEM_ROOT = Path("/")
# Isolated letters, symbol names, spelling alphabet, digits and silences are not sentences: a
# general-English set of them would score formatting conventions, not recognition.
SKIPPED_FOLDERS = ("letters", "phonetic", "digits", "silence")
MAX_SECONDS = 30  # Whisper's window: a longer prompt would be scored on what the model never heard
_ANNOTATION = re.compile(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)")
_KEY_SYMBOLS = re.compile(r"[*#]")  # spoken as "star" / "pound" or not at all: the audio cannot be checked


@dataclass(frozen=True)
class Prompt:
    """One transcript line: ``key`` is the sound's path without extension (``digits/5``)."""

    key: str
    text: str


def install_hint() -> str:
    return (f"install them (Debian/Ubuntu, as root: apt-get install {AUDIO_PACKAGE} {TEXT_PACKAGE}), or "
            f"download both .deb files (apt-get download {AUDIO_PACKAGE} {TEXT_PACKAGE}) and pass their "
            "folder with --source")


def parse_transcripts(text: str) -> list[Prompt]:
    """``key: text`` lines of ``core-sounds-en.txt``; ``;`` comments and blank lines skipped."""
    prompts = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        key, sep, said = line.partition(":")
        if sep and key.strip() and " " not in key.strip():
            prompts.append(Prompt(key.strip(), said.strip()))
    return prompts


def clean_transcript(text: str) -> tuple[str, str | None]:
    """What was said, and why the row is dropped (None: kept).

    Bracketed, angle-bracketed and parenthesised parts are annotations (``[ascending tones]``,
    ``(note: does not say "2")``) and go; a line that was nothing but annotations is non-speech.
    Lines naming keypad symbols are dropped: whether ``*`` was read "star" or "asterisk" cannot be told
    from the text.
    """
    said = " ".join(_ANNOTATION.sub(" ", text).split())
    said = said.strip(" ,;")
    if not re.search(r"[A-Za-z0-9]", said):
        return "", "non-speech"
    if _KEY_SYMBOLS.search(said):
        return said, "keypad symbol"
    return said, None


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / "usr/share/doc" / TEXT_PACKAGE / name, root / "usr/share/doc" / TEXT_PACKAGE /
                      f"{name}.gz"):
        if candidate.is_file():
            return candidate
    if root == SYSTEM_ROOT:
        return None
    found = sorted(root.rglob(f"{name}*"))
    return found[0] if found else None


def find_sources(root: Path) -> tuple[Path, Path] | None:
    """(folder of ``.g722`` prompts, transcript file) under ``root`` (a system or an unpacked tree)."""
    transcripts = _find(root, TRANSCRIPTS)
    sounds = root / SOUNDS_DIR
    if not sounds.is_dir() and root != SYSTEM_ROOT:  # an unpacked tree or an upstream tarball's contents
        folders = sorted({p.parent for p in root.rglob("*.g722")}, key=lambda p: (len(p.parts), str(p)))
        sounds = folders[0] if folders else sounds
    if transcripts is None or not sounds.is_dir() or not any(sounds.glob("*.g722")):
        return None
    return sounds, transcripts


def fetch_packages(into: Path, *, update: bool | None = None) -> str:
    """``apt-get download`` the two packages into ``into``; returns what was done.

    Raises:
        AsrtuneError: no apt-get, or the download failed (with what to install instead).
    """
    return fetch_debs([AUDIO_PACKAGE, TEXT_PACKAGE], into, hint=install_hint(), update=update)


def decode_g722(path: Path) -> np.ndarray:
    """A raw G.722 file as 16 kHz mono float32 samples, shape (T,) (PyAV, else the ffmpeg program).

    Raises:
        AsrtuneError: neither decoder is available, or the file does not decode.
    """
    try:
        import av
    except ImportError:
        av = None
    if av is not None:
        chunks = []
        try:
            with av.open(str(path), format="g722") as container:
                stream = container.streams.audio[0]
                resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
                for frame in container.decode(stream):
                    chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
        except (av.error.FFmpegError, IndexError) as error:
            raise AsrtuneError(f"cannot decode {path}: {error}") from error
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if shutil.which("ffmpeg"):
        result = subprocess.run(["ffmpeg", "-v", "error", "-f", "g722", "-i", str(path), "-f", "f32le", "-ac", "1",
                                 "-ar", str(SAMPLE_RATE), "-"], capture_output=True)
        if result.returncode != 0:
            raise AsrtuneError(f"ffmpeg cannot decode {path}: {result.stderr.decode(errors='replace').strip()}")
        return np.frombuffer(result.stdout, dtype=np.float32).copy()
    raise AsrtuneError("decoding G.722 needs FFmpeg: pip install av (asrtune's deploy extra brings it) or "
                       "apt-get install ffmpeg")


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def _locate(out: Path, source: Path | None, fetch: bool) -> tuple[tuple[Path, Path], str]:
    if source is not None:
        source = Path(source)
        if not source.is_dir():
            raise AsrtuneError(f"--source {source}: not a folder")
        if not find_sources(source):
            unpack_debs(source, out / "packages" / "root")
            found = find_sources(out / "packages" / "root")
            if found:
                return found, f"unpacked the .deb files of {source}"
        found = find_sources(source)
        if found:
            return found, f"read {source}"
        raise AsrtuneError(f"{source} holds neither the {SPEAKER} .g722 prompts with {TRANSCRIPTS} nor "
                           f"{AUDIO_PACKAGE}/{TEXT_PACKAGE} .deb files")
    found = find_sources(SYSTEM_ROOT)
    if found:
        return found, "read the installed packages"
    unpacked = out / "packages" / "root"
    found = find_sources(unpacked) if unpacked.is_dir() else None
    if found:
        return found, f"reused {unpacked}"
    if not fetch:
        raise AsrtuneError(f"{AUDIO_PACKAGE} and {TEXT_PACKAGE} are not installed: {install_hint()}")
    done = fetch_packages(out / "packages")
    unpack_debs(out / "packages", unpacked)
    found = find_sources(unpacked)
    if not found:
        raise AsrtuneError(f"the fetched packages hold no {SPEAKER} prompts with transcripts: {install_hint()}")
    return found, done


def _write_wav(path: Path, samples: np.ndarray, utt_id: str, text: str) -> Utterance:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(samples, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
    return Utterance(id=utt_id, audio=str(path.resolve()), text=text, language="en",
                     duration=samples.size / SAMPLE_RATE, voice=SPEAKER)


def build_real_english(out: str | Path, *, source: str | Path | None = None, fetch: bool = True,
                       limit: int | None = None) -> dict:
    """Write ``out/audio/*.wav``, ``out/manifest.jsonl`` and ``out/report.json``; returns the report.

    Prompts longer than Whisper's 30 s window are not in the manifest (a general set scored on truncated
    audio would be wrong): they go to ``out/long/*.wav`` and ``out/long.jsonl``, recordings for long-form
    transcription, word timestamps and forced alignment (the longest is 73 s).

    Args:
        out: output folder.
        source: a folder holding the two ``.deb`` files, or an unpacked tree / upstream tarball contents
            (None: the installed system, else fetch with apt-get).
        fetch: allow ``apt-get download`` when nothing is installed.
        limit: keep at most this many prompts (sorted by key; None: all).

    Raises:
        AsrtuneError: the packages are neither installed nor fetchable (the message says what to install).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (sounds, transcripts), how = _locate(out, Path(source) if source else None, fetch)
    dropped: list[dict] = []
    utterances: list[Utterance] = []
    long: list[Utterance] = []
    for prompt in sorted(parse_transcripts(_read_text(transcripts)), key=lambda p: p.key):
        said, reason = clean_transcript(prompt.text)
        folder = prompt.key.split("/")[0] if "/" in prompt.key else ""
        if reason is None and folder in SKIPPED_FOLDERS:
            reason = f"isolated {folder}"
        audio = sounds / f"{prompt.key}.g722"
        if reason is None and not audio.is_file():
            reason = "no audio"
        if reason is not None:
            dropped.append({"key": prompt.key, "text": prompt.text, "reason": reason})
            continue
        if limit is not None and len(utterances) >= limit:
            break
        samples = decode_g722(audio)
        utt_id = "asterisk-en-" + prompt.key.replace("/", "_")
        if not SAMPLE_RATE // 10 <= samples.size <= MAX_SECONDS * SAMPLE_RATE:
            reason = "too short" if samples.size < SAMPLE_RATE // 10 else f"over {MAX_SECONDS} s (in long.jsonl)"
            dropped.append({"key": prompt.key, "text": prompt.text, "reason": reason})
            if samples.size > MAX_SECONDS * SAMPLE_RATE:
                long.append(_write_wav(out / "long" / f"{utt_id}.wav", samples, utt_id, said))
            continue
        wav = out / "audio" / f"{utt_id}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(wav), np.clip(samples, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
        utterances.append(Utterance(id=utt_id, audio=str(wav.resolve()), text=said, language="en",
                                    duration=samples.size / SAMPLE_RATE, voice=SPEAKER))
    if not utterances:
        raise AsrtuneError(f"no usable prompts in {sounds}")
    write_manifest(utterances, out / "manifest.jsonl")
    if long:
        write_manifest(long, out / "long.jsonl")
    report = {
        "manifest": str((out / "manifest.jsonl").resolve()),
        "source": how,
        "packages": [AUDIO_PACKAGE, TEXT_PACKAGE],
        "speaker": SPEAKER,
        "license": "CC-BY-SA-3.0 (Allison Smith; see the packages' copyright file)",
        "kept": len(utterances),
        "hours": round(sum(u.duration or 0.0 for u in utterances) / 3600, 4),
        "dropped_by_reason": dict(Counter(d["reason"] for d in dropped)),
        "long": {"manifest": str((out / "long.jsonl").resolve()) if long else None, "recordings": len(long),
                 "seconds": [round(u.duration or 0.0, 2) for u in long]},
        "dropped": dropped,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return report
