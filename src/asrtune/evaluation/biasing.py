"""Decoding-time biasing towards a term list: new vocabulary without audio or training.

Each term is tokenised as it appears mid-sentence (with Whisper's leading space: `` amoxicillin``
is ``Ġam oxic illin``), as written, lower-cased and capitalised; the token sequences go into a
trie. At every decoding step, :class:`TermBiasProcessor` (a transformers ``LogitsProcessor``) adds
a bonus to the scores of

* every token that starts a term (the trie root's children): ``start_weight`` (default ``weight``);
  the capitalised spellings start only at the start of a sentence (the hypothesis' first token, or
  after ``.``, ``?``, ``!``), the others anywhere; a first token of one letter (`` t`` of
  ``tachycardia``) gets no start bonus, since it says nothing about which word follows (boosting it
  boosts every word with that initial, and letter-by-letter spelling loops: measured, README), but
  once the model writes it the term's continuations get theirs;
* every token that continues a partial match at the end of the row's hypothesis (for each suffix
  of the generated tokens that is a path in the trie, the children of that path): ``weight``,

each token at most once per step, per row (batch x beams), and never a token that would repeat the
hypothesis' last n tokens back to back (n <= 4): terms do not repeat themselves, decoding loops do,
and a bonus that helps a loop along costs far more words than the term gains (measured: README). Only the generated part of a row is
matched: tokens before the begin index that Whisper's ``generate`` sets (``set_begin_index``: the
forced ids and any ``<|startofprev|>`` prompt) and anything before the last special token (timestamps,
``<|startoftranscript|>`` ...) never count.

A hypothesis keeps the bonus of whole terms only ("failure arcs": Zhao et al., 2019, *Shallow-Fusion
End-to-End Contextual Biasing*; k2's ContextGraph): while its end is an unfinished match (a trie path
that is not itself a whole term), every token that does not go on with that match gets the bonus the
match has earned so far taken back (a term inside a longer one, `` atrial`` of `` atrial
fibrillation``, keeps its own). Under beam search the beam score carries the bonus, so a beam that
started a term and left it falls back behind those that never started it; greedy decoding cannot
revise its past, so there the take-back only widens the margin for going on. (Where two terms
overlap, a match left for a shorter one that starts inside it, the shorter one's tokens may be taken
back twice.) Greedy scores are logits and beam scores log-probabilities; either way the bonus is
``weight`` nats before normalisation (shallow fusion with a term "language model" that only knows
the list). ``weight`` 0 leaves the scores unchanged.

A prefix is paid for once. When a hypothesis leaves an unfinished match, the path it had matched (the
term's first tokens, ``` dev elop``` say) is spent for the rest of that hypothesis: entering the same path
again earns nothing, neither its start nor its continuations, up to where the earlier match stopped (going
further still earns the continuation bonus, and whole terms are never spent). Without that, a decode that
loops through a term's first tokens ("the development of the development of ...") collects the start bonus
on every turn, and the bonus feeds the loop. Greedy decoding cannot take the earlier turn back, so this is
what stops the bonus there; the decoding (:func:`asrtune.evaluation.decode.decode_dataset`) also decodes a
biased row that still loops again without the bias.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from asrtune.errors import AsrtuneError
from asrtune.evaluation.terms import TermList, read_terms

__all__ = ["TermTrie", "TermBiasProcessor", "term_variants", "build_trie", "sentence_end_ids", "bias_processor",
           "DEFAULT_BIAS_WEIGHT", "REPEAT_GUARD", "MIN_START_CHARS"]

DEFAULT_BIAS_WEIGHT = 3.0  # measured: benchmarks/biasing.py (README, "Vocabulary without audio")


class TermTrie:
    """A prefix tree over token id sequences; each node maps a token id to its child node."""

    def __init__(self, sequences: Iterable[Sequence[int]] = ()) -> None:
        self.root: dict[int, dict] = {}
        self.ends: set[tuple[int, ...]] = set()  # the sequences themselves (a term may prefix a longer one)
        self.mid_starts: set[int] | None = None  # first tokens that may start mid-sentence (None: all)
        self.weak_starts: set[int] = set()  # first tokens that never get the start bonus
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
        self.ends.add(tuple(int(token) for token in sequence))
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

    def abandoned(self, tokens: Sequence[int]) -> dict[tuple[int, ...], int]:
        """The spent paths of ``tokens``: every prefix of a match that was left unfinished, with the position of
        the first token that left it (the earliest, when a path was left more than once).

        A match starts at any position whose token starts a sequence, follows the trie and is left when the next
        token is no child of its node; it is unfinished when no sequence ends along it (a whole term is kept).
        A match still open at the end of ``tokens`` is not left.
        """
        spent: dict[tuple[int, ...], int] = {}
        for start in range(len(tokens)):
            node, end, finished = self.root, start, False
            while end < len(tokens) and tokens[end] in node:
                node = node[tokens[end]]
                end += 1
                finished = finished or tuple(tokens[start:end]) in self.ends
            if end == len(tokens) or end == start or finished:
                continue
            for depth in range(1, end - start + 1):
                path = tuple(tokens[start:start + depth])
                spent[path] = min(spent.get(path, end), end)
        return spent

    def pending(self, tokens: Sequence[int]) -> int | None:
        """Where the longest unfinished match at the end of ``tokens`` starts (None: none).

        An unfinished match is a suffix that is a path in the trie with children (it could go on) and
        is not itself a whole sequence.
        """
        for start in range(max(0, len(tokens) - self.depth + 1), len(tokens)):
            suffix = tuple(tokens[start:])
            if self.node(suffix) and suffix not in self.ends:
                return start
        return None


def term_variants(term: str) -> list[str]:
    """The spellings a term is biased in: as written, lower-cased, first letter capitalised."""
    variants = [term, term.lower(), term[:1].upper() + term[1:], term[:1].upper() + term[1:].lower()]
    return list(dict.fromkeys(variants))


def build_trie(tokenizer, terms: TermList) -> TermTrie:
    """A trie of every variant of every term, tokenised mid-sentence (leading space, no special tokens).

    ``trie.mid_starts`` holds the first tokens of the spellings as written and lower-cased (they may
    start anywhere); the capitalised spellings' first tokens start only sentences.
    """
    trie = TermTrie()
    trie.mid_starts = set()  # filled below
    for term in terms.terms:
        for variant in term_variants(term):
            ids = tokenizer.encode(" " + variant, add_special_tokens=False)
            trie.add(ids)
            if ids and variant in (term, term.lower()):
                trie.mid_starts.add(int(ids[0]))
    trie.weak_starts = {t for t in trie.root if len(tokenizer.decode([t]).strip()) < MIN_START_CHARS}
    return trie


def sentence_end_ids(tokenizer) -> frozenset[int]:
    """Token ids whose text ends a sentence (``.``, ``?``, ``!``), after which capitalised terms may start."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return frozenset(i for i, piece in enumerate(pieces) if piece and piece.rstrip().endswith((".", "?", "!")))


def _special_ids(tokenizer) -> frozenset[int]:
    ids = set(getattr(tokenizer, "all_special_ids", ()) or ())
    ids.update(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return frozenset(int(i) for i in ids)


REPEAT_GUARD = 4  # never boost a token that repeats the last n <= 4 tokens back to back
MIN_START_CHARS = 2  # a first token shorter than this (one letter) gets no start bonus


def _repeating(tokens: Sequence[int], longest: int = REPEAT_GUARD) -> set[int]:
    """Tokens that, appended, would end ``tokens`` with an n-gram twice in a row (n = 1..longest)."""
    found = set()
    for n in range(1, longest + 1):
        if len(tokens) < 2 * n - 1:
            break
        # tokens + [t] ends with the same n tokens twice iff the n-1 before t equal the n-1 ending at
        # tokens[-n - 1] and t == tokens[-n]
        if n == 1 or list(tokens[len(tokens) - 2 * n + 1:len(tokens) - n]) == list(tokens[len(tokens) - n + 1:]):
            found.add(tokens[-n])
    return found


class TermBiasProcessor(LogitsProcessor):
    """Adds a bonus to the tokens that start or continue a term (see the module doc).

    Args:
        trie: the terms' token sequences (``trie.mid_starts``: first tokens that may start mid-sentence,
            None: all; ``trie.weak_starts``: first tokens that never get the start bonus).
        weight: the bonus for continuing a term (>= 0, finite).
        special_ids: token ids that are not text (a match never crosses one).
        text_vocab: ids at or above this are not text either (Whisper's timestamps), None: no limit.
        start_weight: the bonus for starting a term (None: ``weight``).
        sentence_ends: token ids after which a sentence starts (capitalised terms may start there).
    """

    def __init__(self, trie: TermTrie, weight: float, special_ids: Iterable[int] = (),
                 text_vocab: int | None = None, *, start_weight: float | None = None,
                 sentence_ends: Iterable[int] = ()) -> None:
        start_weight = weight if start_weight is None else start_weight
        for name, value in (("--bias-weight", weight), ("--bias-start-weight", start_weight)):
            if not math.isfinite(value) or value < 0:
                raise AsrtuneError(f"{name} must be a finite number >= 0, not {value}")
        if not trie.sequences:
            raise AsrtuneError("biasing needs at least one term with tokens")
        self.trie, self.weight, self.start_weight = trie, float(weight), float(start_weight)
        self.special_ids = frozenset(special_ids)
        self.text_vocab = text_vocab
        self.sentence_ends = frozenset(sentence_ends)
        self.begin_index = 0
        starts = set(trie.root) - trie.weak_starts
        self.starts = sorted(starts)  # at the start of a sentence
        self.mid_starts = sorted(starts if trie.mid_starts is None else starts & trie.mid_starts)  # elsewhere

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

    def _starts_at(self, prefix: Sequence[int]) -> list[int]:
        """The start tokens eligible after ``prefix`` (all at a sentence start, else the mid-sentence ones)."""
        return self.starts if not prefix or prefix[-1] in self.sentence_ends else self.mid_starts

    def _row_bonus(self, tail: list[int], spent: dict[tuple[int, ...], int]) -> tuple[list[int], list[int]]:
        """(start tokens, continuation tokens) to boost after a row's generated text tokens ``tail``.

        ``spent``: the row's spent paths (:meth:`TermTrie.abandoned`); a token that would re-enter one earns nothing.
        """
        starts = [t for t in self._starts_at(tail) if (t,) not in spent]
        continuations: set[int] = set()
        for start in range(max(0, len(tail) - self.trie.depth + 1), len(tail)):
            node = self.trie.node(tail[start:])
            if node:
                path = tuple(tail[start:])
                continuations.update(t for t in node if spent.get(path + (t,), len(tail) + 1) > start)
        blocked = _repeating(tail)
        if blocked:
            starts = [t for t in starts if t not in blocked]
            continuations -= blocked
        return starts, sorted(continuations)

    def _given(self, tail: list[int], start: int, index: int, spent: dict[tuple[int, ...], int]) -> float:
        """The bonus ``tail[index]`` earned as a token of the match that starts at ``start``."""
        prefix, token = tail[:index], tail[index]
        if token in _repeating(prefix) or spent.get(tuple(tail[start:index + 1]), len(tail) + 1) <= start:
            return 0.0
        if index > start:
            return self.weight
        return self.start_weight if token in self._starts_at(prefix) else 0.0

    def pending_bonus(self, tail: list[int], spent: dict[tuple[int, ...], int] | None = None,
                      ) -> tuple[float, set[int]]:
        """(the bonus held by the unfinished match at the end of ``tail``, the tokens that continue it).

        The bonus counts from the match's first token, or from just after the longest whole term it
        begins with (a finished term keeps its bonus); tokens that re-entered a spent path earned nothing.
        No unfinished match: ``(0.0, set())``.
        """
        spent = self.trie.abandoned(tail) if spent is None else spent
        start = self.trie.pending(tail)
        if start is None:
            return 0.0, set()
        path = tail[start:]
        finished = max((n for n in range(1, len(path)) if tuple(path[:n]) in self.trie.ends), default=0)
        held = sum(self._given(tail, start, start + i, spent) for i in range(finished, len(path)))
        return held, set(self.trie.node(path))

    def row_scores(self, tail: list[int], bonus: torch.Tensor) -> None:
        """Write one row's bonus (V,) after its generated text tokens ``tail``.

        Starting a term earns ``start_weight``, continuing one ``weight``; every token that leaves the
        unfinished match at the end of ``tail`` takes back the bonus that match has earned so far, so a
        hypothesis keeps the bonus of whole terms only (what earns it is a finished term); a path the row
        entered and left before earns nothing again.
        """
        spent = self.trie.abandoned(tail)
        held, extending = self.pending_bonus(tail, spent)
        starts, continuations = self._row_bonus(tail, spent)
        bonus.fill_(-held)
        bonus[starts] = self.start_weight - held
        # assigned after the starts, not added: a token gets one bonus, the continuation's
        bonus[continuations] = self.weight - held
        extending = sorted(extending)
        bonus[extending] = 0.0  # a token that goes on with the match keeps what it holds
        bonus[sorted(set(extending) & set(continuations))] = self.weight

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Args: input_ids (R, L) every row's tokens so far; scores (R, V). Returns the biased (R, V)."""
        tails = input_ids[:, self.begin_index:].tolist()  # the whole generated text: spent paths go back to its start
        bonus = torch.zeros_like(scores)
        for row, tail in enumerate(tails):
            self.row_scores(self._text_tail(tail), bonus[row])
        return scores + bonus


def bias_processor(tokenizer, terms: TermList | str, weight: float = DEFAULT_BIAS_WEIGHT, *,
                   start_weight: float | None = None) -> LogitsProcessorList:
    """A ``LogitsProcessorList`` holding one :class:`TermBiasProcessor` for ``generate(logits_processor=...)``.

    Args:
        tokenizer: the model's tokenizer (Whisper's, or any with ``encode``).
        terms: a :class:`TermList`, or a term-list path / ``packaged:NAME``.
        weight: the bonus for continuing a term, in nats.
        start_weight: the bonus for starting one (None: ``weight``).
    """
    term_list = terms if isinstance(terms, TermList) else read_terms(terms)
    trie = build_trie(tokenizer, term_list)
    processor = TermBiasProcessor(trie, weight, _special_ids(tokenizer), text_vocab=len(tokenizer),
                                  start_weight=start_weight, sentence_ends=sentence_end_ids(tokenizer))
    return LogitsProcessorList([processor])
