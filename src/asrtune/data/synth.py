"""Synthesised speech with espeak-ng: the text-only route to domain data.

Each line of a text file becomes one utterance. Lines are spread over one or more voices (espeak-ng
voices and variants: ``en-us``, ``en-gb+f2``, ``en-029+m5``), each row recording its voice, and speaking
rate and pitch vary per line (seeded), so the model does not learn one fixed voice setting. Keep some
voices out of training for test and general sets: a model adapted to a voice scores better on anything
that voice reads, which is not the same as recognising speech.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import io
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from asrtune.data.audio import SAMPLE_RATE, resample
from asrtune.data.manifest import Utterance, write_manifest
from asrtune.errors import AsrtuneError

__all__ = ["SynthSettings", "espeak_available", "synthesise", "synthesise_lines", "read_text_lines", "parse_voices"]


@dataclass(frozen=True, kw_only=True)
class SynthSettings:
    """espeak-ng settings; rate (words per minute) and pitch (0-99) are drawn per line.

    ``voices``, when given, replaces ``voice``: line i is read by ``voices[i % len(voices)]`` (a
    seeded rotation), so every voice reads an equal share.
    """

    voice: str = "en-us"
    voices: tuple[str, ...] = ()
    rate_range: tuple[int, int] = (140, 190)
    pitch_range: tuple[int, int] = (35, 65)
    seed: int = 0

    def __post_init__(self) -> None:
        if any(not v or any(c.isspace() for c in v) for v in (self.voice, *self.voices)):
            raise AsrtuneError(f"espeak-ng voice names are non-empty, without spaces: {(self.voice, *self.voices)}")

    @property
    def voice_list(self) -> tuple[str, ...]:
        return tuple(self.voices) or (self.voice,)


def parse_voices(text: str) -> tuple[str, ...]:
    """``"en-us, en-gb+f2"`` -> ``("en-us", "en-gb+f2")``."""
    voices = tuple(v.strip() for v in text.split(",") if v.strip())
    if not voices:
        raise AsrtuneError(f"no voices in {text!r}")
    return voices


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def _require_espeak() -> str:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise AsrtuneError("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng; "
                           "macOS: brew install espeak-ng); `make install` does it where it can")
    return binary


def synthesise(text: str, path: Path, *, voice: str, rate: int, pitch: int) -> float:
    """Speak ``text`` into a 16 kHz mono wav; returns its duration in seconds."""
    binary = _require_espeak()
    result = subprocess.run(
        [binary, "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", text],
        capture_output=True, check=False,
    )
    if result.returncode != 0 or not result.stdout:
        message = result.stderr.decode(errors="replace").strip() or "no audio produced"
        raise AsrtuneError(f"espeak-ng failed for voice {voice!r}: {message}")
    samples, rate_hz = sf.read(io.BytesIO(result.stdout), dtype="float32")
    samples = resample(samples if samples.ndim == 1 else samples.mean(axis=1), rate_hz)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, SAMPLE_RATE, subtype="PCM_16")
    return len(samples) / SAMPLE_RATE


def _slug(voice: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "_", voice)


def _spoken_digest(text: str, rate: int, pitch: int) -> str:
    return hashlib.sha256(f"{text}\0{rate}\0{pitch}".encode()).hexdigest()[:10]


def read_text_lines(path: str | Path) -> list[str]:
    """Non-empty stripped lines of a UTF-8 text file."""
    path = Path(path)
    if not path.is_file():
        raise AsrtuneError(f"text file not found: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise AsrtuneError(f"no text lines in {path}")
    return lines


def synthesise_lines(lines: list[str], out_dir: str | Path, *, settings: SynthSettings = SynthSettings(),
                     prefix: str = "utt", language: str | None = None, manifest_name: str = "manifest.jsonl",
                     workers: int = 4, progress: bool = True) -> Path:
    """Speak each line into ``out_dir/audio/`` and write ``out_dir/manifest_name``.

    Returns:
        The manifest path. Rows whose audio already exists are not synthesised again.
    """
    _require_espeak()
    out_dir = Path(out_dir)
    rng = random.Random(settings.seed)
    voices = settings.voice_list
    offset = rng.randrange(len(voices))
    jobs = []
    for index, text in enumerate(lines):
        rate = rng.randint(*settings.rate_range)
        pitch = rng.randint(*settings.pitch_range)
        jobs.append((f"{prefix}-{index:05d}", text, voices[(index + offset) % len(voices)], rate, pitch))

    def run(job: tuple[str, str, str, int, int]) -> Utterance:
        utt_id, text, voice, rate, pitch = job
        # what is spoken is in the file name: audio is reused only for the same line, voice, rate and pitch
        # (an edited text file or a re-cut split puts other lines under the same ids)
        path = out_dir / "audio" / f"{utt_id}-{_slug(voice)}-{_spoken_digest(text, rate, pitch)}.wav"
        if path.is_file():
            duration = sf.info(str(path)).duration
        else:
            duration = synthesise(text, path, voice=voice, rate=rate, pitch=pitch)
        return Utterance(id=utt_id, audio=str(path.resolve()), text=text, language=language, duration=duration,
                         voice=voice)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        utterances = list(tqdm(pool.map(run, jobs), total=len(jobs), desc=f"synth {prefix}",
                               disable=not progress, unit="utt"))
    manifest = out_dir / manifest_name
    write_manifest(utterances, manifest)
    return manifest
