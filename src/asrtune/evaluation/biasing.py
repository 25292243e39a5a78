"""Decoding-time biasing towards a term list: new vocabulary without audio or training.

Each term is tokenised as it appears mid-sentence (with Whisper's leading space: `` amoxicillin``
is ``Ġam oxic illin``), as written, lower-cased and capitalised; the token sequences go into a
trie. At every decoding step, :class:`TermBiasProcessor` (a transformers ``LogitsProcessor``) adds
``weight`` to the scores of

* every token that starts a term (the trie root's children), and
* every token that continues a partial match at the end of the row's hypothesis (for each suffix
  of the generated tokens that is a path in the trie, the children of that path),

each token at most once per step, per row (batch x beams). Only the generated part of a row is
matched: tokens before the begin index that Whisper's ``generate`` sets (``set_begin_index``: the
forced ids and any ``<|startofprev|>`` prompt) and anything before the last special token (timestamps,
``<|startoftranscript|>`` ...) never count. Greedy scores are logits and beam scores log-probabilities;
either way the bonus is ``weight`` nats before normalisation (shallow fusion with a term "language
model" that only knows the list). ``weight`` 0 leaves the scores unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from asrtune.errors import AsrtuneError
from asrtune.evaluation.terms import TermList, read_terms

__all__ = ["TermTrie", "TermBiasProcessor", "term_variants", "build_trie", "bias_processor", "DEFAULT_BIAS_WEIGHT"]

DEFAULT_BIAS_WEIGHT = 2.0


class TermTrie:
    """A prefix tree over token id sequences; each node maps a token id to its child node."""

    def __init__(self, sequences: Iterable[Sequence[int]] = ()) -> None:
        self.root: dict[int, dict] = {}
        self.sequences = 0
        self.depth = 0
        for sequence in sequences:
            self.add(sequence)

    def add(self, sequence: Sequence[int]) -> None:
        """Insert one token sequence (an empty one is ignored)."""
        if not sequence:
            return
        node = self.root
        for token in sequence:
            node = node.setdefault(int(token), {})
        self.sequences += 1
        self.depth = max(self.depth, len(sequence))

    def node(self, prefix: Sequence[int]) -> dict[int, dict] | None:
        """The node reached by ``prefix`` from the root, or None when no sequence starts so."""
        node = self.root
        for token in prefix:
            node = node.get(token)
            if node is None:
                return None
        return node

    def continuations(self, tokens: Sequence[int]) -> set[int]:
        """Tokens that continue a partial match ending at the end of ``tokens`` (not the root's children).

        Every suffix of ``tokens`` shorter than the deepest sequence is tried as a prefix.
        """
        found: set[int] = set()
        for start in range(max(0, len(tokens) - self.depth + 1), len(tokens)):
            node = self.node(tokens[start:])
            if node:
                found.update(node)
        return found


def term_variants(term: str) -> list[str]:
    """The spellings a term is biased in: as written, lower-cased, first letter capitalised."""
    variants = [term, term.lower(), term[:1].upper() + term[1:], term[:1].upper() + term[1:].lower()]
    return list(dict.fromkeys(variants))


def build_trie(tokenizer, terms: TermList) -> TermTrie:
    """A trie of every variant of every term, tokenised mid-sentence (leading space, no special tokens)."""
    trie = TermTrie()
    for term in terms.terms:
        for variant in term_variants(term):
            trie.add(tokenizer.encode(" " + variant, add_special_tokens=False))
    return trie


def _special_ids(tokenizer) -> frozenset[int]:
    ids = set(getattr(tokenizer, "all_special_ids", ()) or ())
    ids.update(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return frozenset(int(i) for i in ids)


class TermBiasProcessor(LogitsProcessor):
    """Adds ``weight`` to the tokens that start or continue a term (see the module doc).

    Args:
        trie: the terms' token sequences.
        weight: the bonus (>= 0, finite).
        special_ids: token ids that are not text (a match never crosses one).
        text_vocab: ids at or above this are not text either (Whisper's timestamps), None: no limit.
    """

    def __init__(self, trie: TermTrie, weight: float, special_ids: Iterable[int] = (),
                 text_vocab: int | None = None) -> None:
        if not math.isfinite(weight) or weight < 0:
            raise AsrtuneError(f"--bias-weight must be a finite number >= 0, not {weight}")
        if not trie.sequences:
            raise AsrtuneError("biasing needs at least one term with tokens")
        self.trie, self.weight = trie, float(weight)
        self.special_ids = frozenset(special_ids)
        self.text_vocab = text_vocab
        self.begin_index = 0
        self.starts = sorted(trie.root)

    def set_begin_index(self, begin_index: int) -> None:
        """Where the generated tokens start (Whisper's ``generate`` calls this before decoding)."""
        self.begin_index = int(begin_index)

    def _text_tail(self, row: list[int]) -> list[int]:
        """The generated text tokens at the end of a row, after the last special token."""
        for index in range(len(row) - 1, -1, -1):
            token = row[index]
            if token in self.special_ids or (self.text_vocab is not None and token >= self.text_vocab):
                return row[index + 1:]
        return row

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Args: input_ids (R, L) every row's tokens so far; scores (R, V). Returns the biased (R, V)."""
        window = max(self.trie.depth - 1, 0)
        generated = input_ids[:, self.begin_index:]
        tails = generated[:, generated.shape[1] - min(window, generated.shape[1]):].tolist() if window else []
        bonus = torch.zeros_like(scores)
        bonus[:, self.starts] = self.weight
        rows, tokens = [], []
        for row, tail in enumerate(tails):
            for token in self.trie.continuations(self._text_tail(tail)):
                rows.append(row)
                tokens.append(token)
        if rows:
            bonus[rows, tokens] = self.weight  # assigned, not added: a token gets the bonus once
        return scores + bonus


def bias_processor(tokenizer, terms: TermList | str, weight: float = DEFAULT_BIAS_WEIGHT) -> LogitsProcessorList:
    """A ``LogitsProcessorList`` holding one :class:`TermBiasProcessor` for ``generate(logits_processor=...)``.

    Args:
        tokenizer: the model's tokenizer (Whisper's, or any with ``encode``).
        terms: a :class:`TermList`, or a term-list path / ``packaged:NAME``.
        weight: the bonus in nats.
    """
    term_list = terms if isinstance(terms, TermList) else read_terms(terms)
    trie = build_trie(tokenizer, term_list)
    processor = TermBiasProcessor(trie, weight, _special_ids(tokenizer), text_vocab=len(tokenizer))
    return LogitsProcessorList([processor])
