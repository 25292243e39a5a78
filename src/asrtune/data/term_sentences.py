"""Training sentences that carry new terms: sentence templates filled with a term list.

For text-only domain data (``asrtune synth --terms FILE``): every term goes into ``per_term``
different templates, and the templates are used in turn so each is used about equally often. The
packaged templates (``packaged:medical_templates_en``) are medical dictation sentences with one
``{term}`` slot; a term at the start of a sentence gets a capital first letter.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from asrtune.data.corpora import PACKAGED_PREFIX
from asrtune.errors import AsrtuneError

__all__ = ["SLOT", "MEDICAL_TEMPLATES", "read_templates", "parse_templates", "term_sentences"]

SLOT = "{term}"
MEDICAL_TEMPLATES = "packaged:medical_templates_en"


def parse_templates(lines: list[str], source: str = "<templates>") -> tuple[str, ...]:
    """Templates from lines (blank lines and ``#`` comments skipped), each with exactly one ``{term}``.

    Raises:
        AsrtuneError: no template, a template without the slot or with it twice, duplicates.
    """
    templates = [" ".join(line.split()) for line in lines if line.strip() and not line.strip().startswith("#")]
    if not templates:
        raise AsrtuneError(f"{source}: no templates (one sentence a line, each with {SLOT})")
    for template in templates:
        if template.count(SLOT) != 1:
            raise AsrtuneError(f"{source}: every template needs exactly one {SLOT}: {template!r}")
    if len(set(templates)) != len(templates):
        raise AsrtuneError(f"{source}: a template is given twice")
    return tuple(templates)


def read_templates(spec: str | Path = MEDICAL_TEMPLATES) -> tuple[str, ...]:
    """Templates from a UTF-8 file or ``packaged:NAME``.

    Raises:
        AsrtuneError: a missing file or packaged name, or bad templates (see :func:`parse_templates`).
    """
    text = str(spec)
    if text.startswith(PACKAGED_PREFIX):
        resource = resources.files("asrtune.data.corpora").joinpath(f"{text.removeprefix(PACKAGED_PREFIX)}.txt")
        if not resource.is_file():
            raise AsrtuneError(f"no packaged templates {text!r} (packaged: {MEDICAL_TEMPLATES})")
        content = resource.read_text(encoding="utf-8")
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise AsrtuneError(f"templates file not found: {path}")
        content = path.read_text(encoding="utf-8")
    return parse_templates(content.splitlines(), source=text)


def _fill(template: str, term: str) -> str:
    if template.startswith(SLOT):
        term = term[:1].upper() + term[1:]
    return template.replace(SLOT, term)


def term_sentences(terms: Sequence[str], templates: tuple[str, ...], *, per_term: int = 3,
                   seed: int = 0) -> list[str]:
    """``per_term`` sentences for every term (a term list's ``terms``), each term in different templates, in a seeded order.

    Templates are dealt in turn from a seeded shuffle, so over the whole list each is used
    ``len(terms) * per_term / len(templates)`` times, give or take one.

    Raises:
        AsrtuneError: ``per_term`` below 1 or above the number of templates.
    """
    if per_term < 1:
        raise AsrtuneError(f"--per-term must be at least 1, not {per_term}")
    if per_term > len(templates):
        raise AsrtuneError(f"--per-term {per_term} needs at least that many templates, there are {len(templates)}")
    rng = random.Random(seed)
    order = list(templates)
    rng.shuffle(order)
    sentences, turn = [], 0
    for term in terms:
        for _ in range(per_term):  # consecutive turns: per_term <= len(order), so never the same template twice
            sentences.append(_fill(order[turn % len(order)], term))
            turn += 1
    rng.shuffle(sentences)
    return sentences
