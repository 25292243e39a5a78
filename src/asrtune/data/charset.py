"""Which characters a transcript in a given language may hold (``asrtune prepare --charset``).

A language maps to Unicode scripts; a transcript passes when every letter and combining mark is
in one of them, and nothing else is a control character, an emoji or another symbol outside the
plain ones (digits, punctuation, spaces, currency and maths signs). The script of a character is
the first word of its Unicode name (``LATIN SMALL LETTER E WITH ACUTE`` -> LATIN), which needs no
table of code-point ranges.
"""

from __future__ import annotations

import unicodedata

__all__ = ["SCRIPTS", "foreign_characters", "known_language"]

_LATIN = ("LATIN",)
SCRIPTS: dict[str, tuple[str, ...]] = {
    **{
        code: _LATIN
        for code in (
            "af",
            "az",
            "ca",
            "cs",
            "cy",
            "da",
            "de",
            "en",
            "es",
            "et",
            "eu",
            "fi",
            "fil",
            "fr",
            "ga",
            "gl",
            "ha",
            "hr",
            "hu",
            "id",
            "is",
            "it",
            "jw",
            "lb",
            "lt",
            "lv",
            "mi",
            "ms",
            "mt",
            "nl",
            "nn",
            "no",
            "oc",
            "pl",
            "pt",
            "ro",
            "sk",
            "sl",
            "so",
            "sq",
            "sv",
            "sw",
            "tk",
            "tl",
            "tr",
            "uz",
            "vi",
            "yo",
            "ln",
            "haw",
            "br",
            "fo",
            "ht",
            "la",
            "sn",
            "su",
            "bs",
            "rw",
            "ig",
            "zu",
            "xh",
        )
    },
    **{code: ("CYRILLIC",) for code in ("be", "bg", "kk", "mk", "mn", "ru", "sr", "tg", "tt", "uk", "ba")},
    "el": ("GREEK",),
    **{code: ("ARABIC",) for code in ("ar", "fa", "ps", "sd", "ur", "ug")},
    "he": ("HEBREW",),
    "yi": ("HEBREW",),
    **{code: ("DEVANAGARI",) for code in ("hi", "mr", "ne", "sa")},
    "bn": ("BENGALI",),
    "as": ("BENGALI",),
    "gu": ("GUJARATI",),
    "pa": ("GURMUKHI",),
    "ta": ("TAMIL",),
    "te": ("TELUGU",),
    "kn": ("KANNADA",),
    "ml": ("MALAYALAM",),
    "si": ("SINHALA",),
    "th": ("THAI",),
    "lo": ("LAO",),
    "km": ("KHMER",),
    "my": ("MYANMAR",),
    "ka": ("GEORGIAN",),
    "hy": ("ARMENIAN",),
    "am": ("ETHIOPIC",),
    "bo": ("TIBETAN",),
    "zh": ("CJK",),
    "yue": ("CJK",),
    "ja": ("CJK", "HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA"),
    "ko": ("HANGUL", "CJK"),
}
# What any transcript may hold besides its script's letters: digits, spaces, punctuation, currency
# and maths signs. Letters of other scripts (Latin in a Russian transcript) are flagged.
_PLAIN_CATEGORIES = ("Nd", "Zs", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sc", "Sm")
_JOINERS = {"\u200c", "\u200d"}  # zero-width (non-)joiners: part of Persian and Indic spelling


def known_language(language: str | None) -> bool:
    return (language or "").lower() in SCRIPTS


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return name.split(" ")[0] if name else ""


def foreign_characters(text: str, language: str) -> list[str]:
    """Characters of ``text`` that do not belong in ``language`` (unique, in order of appearance).

    Raises:
        KeyError: the language has no entry in :data:`SCRIPTS`.
    """
    scripts = SCRIPTS[language.lower()]
    bad: list[str] = []
    for ch in text:
        category = unicodedata.category(ch)
        if category.startswith(("L", "M")):
            ok = _script(ch) in scripts or (category.startswith("M") and _script(ch) == "COMBINING")
        else:
            ok = category in _PLAIN_CATEGORIES or ch in _JOINERS or ch in "\t "
        if not ok and ch not in bad:
            bad.append(ch)
    return bad
