"""Debian packages as data: fetched with ``apt-get download`` (no root needed to fetch) and unpacked with
``dpkg-deb -x`` into a folder, never installed (the real English prompts, the alignment corpus's fortunes)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from asrtune.errors import AsrtuneError

__all__ = ["fetch_debs", "unpack_debs"]


def unpack_debs(folder: Path, into: Path) -> bool:
    """Unpack every ``.deb`` in ``folder`` into ``into``; False when there is none.

    Raises:
        AsrtuneError: dpkg-deb is missing or fails.
    """
    debs = sorted(folder.glob("*.deb"))
    if not debs:
        return False
    if shutil.which("dpkg-deb") is None:
        raise AsrtuneError(f"{folder} holds .deb files but dpkg-deb is missing to unpack them")
    into.mkdir(parents=True, exist_ok=True)  # dpkg-deb -x creates the last folder only
    for deb in debs:
        result = subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], capture_output=True, text=True)
        if result.returncode != 0:
            raise AsrtuneError(f"dpkg-deb -x {deb} failed: {result.stderr.strip()}")
    return True


def fetch_debs(packages: Sequence[str], into: Path, *, hint: str, update: bool | None = None) -> str:
    """``apt-get download`` ``packages`` into ``into``; returns what was done.

    Args:
        hint: what the user can do instead, appended to the errors.
        update: run ``apt-get update`` first when the package lists lack them (None: only as root).

    Raises:
        AsrtuneError: no apt-get, or the download failed.
    """
    names = " ".join(packages)
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise AsrtuneError(f"{names}: this system has no apt-get/dpkg-deb to fetch them: {hint}")
    into.mkdir(parents=True, exist_ok=True)
    command = ["apt-get", "download", "-q", *packages]
    result = subprocess.run(command, cwd=into, capture_output=True, text=True)
    if result.returncode != 0 and (update if update is not None else os.geteuid() == 0):
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
        result = subprocess.run(command, cwd=into, capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()
        raise AsrtuneError(f"apt-get download {names} failed ({reason[-1] if reason else 'no output'}): {hint}")
    return f"fetched {names} with apt-get download into {into}"
