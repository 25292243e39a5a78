"""The page: one self-contained HTML file (Jinja2 template, inline CSS and script, the filter index as JSON).

Nothing is fetched from a network: no CDN, no fonts, no images; a Content-Security-Policy in the page
says so to the browser. Audio is referenced by a path relative to the HTML file (the page opens from
disk, or from ``asrtune explore --serve``), or embedded as ``data:`` URIs when asked and the clips fit
under a size limit.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import jinja2
from markupsafe import Markup

import asrtune
from asrtune.errors import AsrtuneError
from asrtune.explore.clips import DataOverride, clips_for
from asrtune.explore.sources import read_sources
from asrtune.explore.view import build_view

__all__ = [
    "AUDIO_TYPES",
    "DEFAULT_EMBED_LIMIT_MB",
    "Page",
    "audio_links",
    "build_page",
    "render",
    "write_page",
]

DEFAULT_EMBED_LIMIT_MB = 20.0
AUDIO_TYPES = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".m4a": "audio/mp4",
    ".webm": "audio/webm",
}


@dataclass(kw_only=True)
class Page:
    """What a page shows: its views (one per set) and what was left out, with why."""

    views: list[dict]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def utterances(self) -> int:
        return sum(len(v["rows"]) for v in self.views)

    @property
    def audio_files(self) -> list[str]:
        """Every audio file the page plays (absolute paths)."""
        return sorted({r["audio"] for v in self.views for r in v["rows"] if r["audio"]})


def build_page(
    inputs: list[str | Path],
    *,
    data: list[DataOverride] = (),
    picks: tuple[str, ...] = (),
    sets: tuple[str, ...] = (),
) -> Page:
    """Read the inputs (see :func:`asrtune.explore.sources.read_sources`) and compute every view.

    Raises:
        AsrtuneError: bad input (see :func:`~asrtune.explore.sources.read_sources` and
            :func:`~asrtune.explore.clips.clips_for`).
    """
    started = time.perf_counter()
    warnings: list[str] = []
    sources = read_sources(inputs, picks=picks, sets=sets, warnings=warnings)
    clips = clips_for(sources, list(data), warnings)
    views = [build_view(source, set_clips) for source, set_clips in zip(sources, clips, strict=True)]
    return Page(views=views, warnings=warnings, seconds=time.perf_counter() - started)


def audio_links(
    files: list[str], out: Path, *, embed: bool = False, limit_mb: float = DEFAULT_EMBED_LIMIT_MB
) -> dict[str, str]:
    """The ``src`` of each audio file in the page written to ``out``: a URL-quoted path relative to the
    page's folder, or with ``embed`` a ``data:`` URI.

    Raises:
        AsrtuneError: ``embed`` and the files add up to more than ``limit_mb`` megabytes.
    """
    if embed:
        total = sum(Path(f).stat().st_size for f in files) / 1e6
        if total > limit_mb:
            raise AsrtuneError(
                f"the page's {len(files)} clips hold {total:.1f} MB, over the embedding limit of "
                f"{limit_mb:g} MB: raise --embed-limit-mb, or leave out --embed-audio (the page "
                "then refers to the files by relative path)"
            )
        return {
            f: f"data:{AUDIO_TYPES.get(Path(f).suffix.lower(), 'application/octet-stream')};base64,"
            f"{base64.b64encode(Path(f).read_bytes()).decode()}"
            for f in files
        }
    folder = out.resolve().parent
    links = {}
    for f in files:
        try:
            relative = os.path.relpath(f, folder)
        except ValueError:  # another drive (Windows): an absolute file URL
            links[f] = Path(f).as_uri()
            continue
        links[f] = quote(Path(relative).as_posix())
    return links


def _index(view: dict) -> dict:
    """What the page's script filters and sorts on, per row (everything else is in the HTML)."""

    def flags(row: dict) -> list[str]:
        return [f"{flag}:{m}" for m in ("before", "after") if row[m] for flag in row[m]["flags"]]

    return {
        "rows": [
            {
                "id": r["id"],
                "cat": r["cat"],
                "d": r["delta"],
                "wb": r["before"]["wer"] if r["before"] else None,
                "wa": r["after"]["wer"],
                "flags": flags(r),
                "terms": r["terms"],
                "fields": r["fields"],
                "q": r["q"],
            }
            for r in view["rows"]
        ]
    }


def _json_for_script(data: object) -> Markup:
    """JSON that cannot close its ``<script>`` element (``<``, ``>`` and ``&`` as escapes)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return Markup(text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e"))


def _number(value: float | None, digits: int = 3) -> str:
    """A rate with ``digits`` decimals, a count as it is, None as a dash."""
    if value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:+d}" if isinstance(value, int) else f"{value:+.{digits}f}"


def _interval(pair) -> str:
    return "" if not pair else f"[{pair[0]:.3f}, {pair[1]:.3f}]"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("asrtune.explore", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(number=_number, signed=_signed, interval=_interval)
    return env


def render(page: Page, links: dict[str, str], *, title: str | None = None) -> str:
    """The page's HTML, with ``links`` giving each audio file's ``src``."""
    static = resources.files("asrtune.explore") / "static"
    views = page.views
    return (
        _environment()
        .get_template("page.html.j2")
        .render(
            title=title or ", ".join(dict.fromkeys(v["source"] for v in views)),
            views=views,
            links=links,
            version=asrtune.__version__,
            written=datetime.datetime.now().isoformat(timespec="seconds"),
            css=Markup(static.joinpath("explore.css").read_text(encoding="utf-8")),
            script=Markup(static.joinpath("explore.js").read_text(encoding="utf-8")),
            index=_json_for_script({"views": [_index(v) for v in views]}),
        )
    )


def write_page(
    page: Page,
    out: str | Path,
    *,
    embed: bool = False,
    limit_mb: float = DEFAULT_EMBED_LIMIT_MB,
    title: str | None = None,
) -> Path:
    """Write the page to ``out`` (folders made as needed); returns its path.

    Raises:
        AsrtuneError: the file cannot be written, or embedded audio is over the limit.
    """
    out = Path(out)
    if out.is_dir():
        raise AsrtuneError(f"{out} is a folder: name the page's file (--out {out / 'explore.html'})")
    links = audio_links(page.audio_files, out, embed=embed, limit_mb=limit_mb)
    html = render(page, links, title=title)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.with_name(f".{out.name}.tmp")
        staging.write_text(html, encoding="utf-8")
        os.replace(staging, out)
    except OSError as error:
        raise AsrtuneError(f"cannot write {out}: {error.strerror or error}") from error
    return out
