"""The players of an explanation at word, sentence or paragraph granularity, and the tree over them.

A unit is a span of the original text made of whole tokens, masked as a whole (all its tokens
together, in token-id space). Units nest the way a reader sees text: words inside sentences inside
paragraphs, and the partition tree follows that nesting, as SHAP's Text masker's tree follows the
token structure. Token granularity is not here: it keeps SHAP's own clustering (shared/explanation/owen.py).

- paragraph: blocks separated by a blank line (or, in a text without blank lines, by line breaks);
- sentence: pysbd's segmentation of each paragraph (abbreviations, decimals and quotes handled);
- word: letters and digits joined by inner apostrophes and hyphens ("don't", "well-made"), numbers
  with their separators ("3.50", "1,000"), abbreviations with their periods ("U.S."), a run of
  punctuation ("!!!"), and one unit per character in scripts written without spaces (Han, Hiragana,
  Katakana); in the South-East Asian scripts that need a dictionary to find words (Thai, Lao,
  Khmer, Myanmar) each of the model's tokens is a unit.
A unit whose characters share a token with another unit (a tokenizer that merges "." into the next
word, say) is merged with it, since masking cannot split a token.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import regex

from shared.explanation.owen import Token, TokenGroup, merge_score
from shared.kinds import Granularity

_SPACELESS = r"\p{Han}\p{Hiragana}\p{Katakana}"
_DICTIONARY_SCRIPTS = regex.compile(r"[\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]")
_WORD = regex.compile(
    rf"[{_SPACELESS}]"  # one character of a script written without spaces
    r"|\d+(?:[.,:/]\d+)+"  # a number with separators: 3.50, 1,000, 12:30, 1/2
    r"|(?:\p{L}\.){2,}"  # an abbreviation with its periods: U.S., e.g.
    rf"|[\w--[{_SPACELESS}]]+(?:['\u2019\-][\w--[{_SPACELESS}]]+)*"  # letters joined by ' or -
    r"|[^\w\s]+",  # a run of punctuation or symbols
    flags=regex.VERSION1,
)
_BLANK_LINE = regex.compile(r"\n[ \t\r\f\v]*\n\s*")
_LINE_BREAK = regex.compile(r"\n\s*")


@dataclass(frozen=True)
class Units:
    """The units of one encoded text."""

    spans: list[tuple[int, int]]  # each unit's [start, end) in the text, in text order
    of_token: np.ndarray  # each token's unit, or -1 for a token that is always kept ([CLS], [SEP])
    clustering: np.ndarray  # SHAP's linkage format over the units: [left, right, distance, size]


def text_units(
    text: str, offsets: Sequence[tuple[int, int]], keep: np.ndarray, granularity: Granularity
) -> Units:
    """The units of `text` whose tokens have these character offsets; `keep` marks boundary tokens."""
    if granularity not in ("paragraph", "sentence", "word"):
        raise ValueError(f"no units for granularity {granularity!r}")
    paragraphs = _paragraphs(text)
    if granularity == "paragraph":  # no sentences needed: pysbd is the costly part on long texts
        pieces, parents = paragraphs, []
    else:
        sentences = [s for p in paragraphs for s in _sentences(text, p)]
        if granularity == "sentence":
            pieces, parents = sentences, [paragraphs]
        else:
            pieces, parents = [w for s in sentences for w in _words(text, s)], [paragraphs, sentences]
    piece_of_char = _label_chars(len(text), pieces)
    if granularity == "word":
        for match in _DICTIONARY_SCRIPTS.finditer(text):
            piece_of_char[match.start()] = -2  # split by the tokenizer, below
    of_token, spans = _units_of_tokens(text, offsets, keep, piece_of_char, len(pieces))
    # Where each unit sits in the nesting (paragraph, sentence): the tree merges inside them first.
    starts = [[start for start, _ in level] for level in parents]
    paths = [tuple(_owner(level, start) for level in starts) for start, _ in spans]
    words = [text[start:end] for start, end in spans]
    return Units(spans=spans, of_token=of_token, clustering=nested_clustering(words, paths))


def _paragraphs(text: str) -> list[tuple[int, int]]:
    splitter = _BLANK_LINE if _BLANK_LINE.search(text) else _LINE_BREAK
    return _stripped(text, _split(text, splitter))


def _split(text: str, separator: regex.Pattern) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in separator.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    return spans


def _stripped(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The spans without surrounding whitespace; empty ones dropped."""
    stripped = (stripped_span(text, start, end) for start, end in spans)
    return [(start, end) for start, end in stripped if start < end]


_PER_THREAD = threading.local()


def _segmenter():  # type: ignore[no-untyped-def]
    """This thread's pysbd segmenter. One per thread: a Segmenter keeps the text it is segmenting on
    itself, so two threads sharing one (a threads pool, HTTP threads) got each other's sentences
    (a windowed job's word unit spanning 479 characters)."""
    segmenter = getattr(_PER_THREAD, "segmenter", None)
    if segmenter is None:
        import pysbd  # imported on first use: it compiles many patterns

        segmenter = _PER_THREAD.segmenter = pysbd.Segmenter(language="en", clean=False)
    return segmenter


def _sentences(text: str, paragraph: tuple[int, int]) -> list[tuple[int, int]]:
    """pysbd's sentences of one paragraph, located in the text (pysbd's own char_span can pick an
    earlier copy of a repeated sentence, so each is found from where the previous one ended)."""
    start, end = paragraph
    spans, cursor = [], start
    for sentence in _segmenter().segment(text[start:end]):
        piece = sentence.strip()
        if not piece:
            continue
        found = text.find(piece, cursor, end)
        if found < 0:  # pysbd altered the text (it should not with clean=False): keep the rest whole
            break
        spans.append((found, found + len(piece)))
        cursor = found + len(piece)
    if cursor < end and text[cursor:end].strip():
        spans.append((cursor, end))
    return _stripped(text, spans)


def _words(text: str, sentence: tuple[int, int]) -> list[tuple[int, int]]:
    start, end = sentence
    return [(m.start(), m.end()) for m in _WORD.finditer(text, start, end)]


def _label_chars(length: int, pieces: list[tuple[int, int]]) -> np.ndarray:
    """Each character's piece, -1 for characters in none (whitespace between pieces)."""
    labels = np.full(length, -1, dtype=np.int64)
    for i, (start, end) in enumerate(pieces):
        labels[start:end] = i
    return labels


def _units_of_tokens(
    text: str, offsets: Sequence[tuple[int, int]], keep: np.ndarray, piece_of_char: np.ndarray, pieces: int
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Map tokens to units: a unit is the pieces its tokens cover, merged where a token spans two.

    Byte-level BPE and SentencePiece tokenizers (RoBERTa, DeBERTa-v3, ModernBERT) give offsets that
    include the space before a word (`Ġmade` -> " made"), and stand-alone space tokens (`Ġ`, `▁`).
    A token's span is taken without its surrounding whitespace, and a token of whitespace alone
    goes with the word after it: the marker is the start of that word, as the tokenizer means it
    (masking the word masks its marker; masking the word before must not). A unit's span is then
    exactly its words' characters."""
    parent = list(range(pieces))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    spans_of_token = [stripped_span(text, start, end) for start, end in offsets]
    token_piece = np.full(len(offsets), -1, dtype=np.int64)
    extra = pieces  # tokens in dictionary scripts become pieces of their own
    for t, (start, end) in enumerate(spans_of_token):
        if keep[t] or end <= start:
            continue
        labels = piece_of_char[start:end]
        if (labels == -2).any():
            parent.append(extra)
            token_piece[t], extra = extra, extra + 1
            continue
        found = [int(p) for p in np.unique(labels) if p >= 0]
        for other in found[1:]:
            parent[root(other)] = root(found[0])
        if found:
            token_piece[t] = found[0]
    for t in range(len(offsets)):  # whitespace (or empty) tokens go with the next word, else the last
        if token_piece[t] < 0 and not keep[t]:
            token_piece[t] = _nearest_piece(token_piece, keep, t)
    # Number the units in text order, by their first token; a unit spans its tokens' characters.
    unit_of_root: dict[int, int] = {}
    of_token = np.full(len(offsets), -1, dtype=np.int64)
    spans: list[list[int]] = []
    for t, piece in enumerate(token_piece):
        if piece < 0:
            continue
        r = root(int(piece))
        if r not in unit_of_root:
            unit_of_root[r] = len(spans)
            spans.append([len(text), 0])
        u = unit_of_root[r]
        of_token[t] = u
        start, end = spans_of_token[t]
        if end > start:  # a space marker adds no characters
            spans[u][0] = min(spans[u][0], start)
            spans[u][1] = max(spans[u][1], end)
    return of_token, [(start, end) for start, end in spans]


def stripped_span(text: str, start: int, end: int) -> tuple[int, int]:
    """[start, end) without whitespace at either end; empty (end <= start) for whitespace alone."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _nearest_piece(token_piece: np.ndarray, keep: np.ndarray, t: int) -> int:
    """The piece of the next token that has one (within the text, not past a boundary token), else
    of the previous one; -1 if no token has a piece."""
    for i in range(t + 1, len(token_piece)):
        if keep[i]:
            break
        if token_piece[i] >= 0:
            return int(token_piece[i])
    for i in range(t - 1, -1, -1):
        if token_piece[i] >= 0:
            return int(token_piece[i])
    return -1


def _owner(starts: list[int], position: int) -> int:
    """Which of the ordered spans (given by their starts) holds `position`: the last one starting
    at or before it (the first one if none does)."""
    return max(0, bisect.bisect_right(starts, position) - 1)


# ---- the tree over units ---------------------------------------------------------------------


class _Group:
    __slots__ = ("node", "size", "tokens")

    def __init__(self, node: int, size: int, tokens: TokenGroup) -> None:
        self.node, self.size, self.tokens = node, size, tokens


def nested_clustering(words: list[str], paths: list[tuple[int, ...]]) -> np.ndarray:
    """A binary tree over the units in SHAP's linkage format, merging inside the innermost level
    first (words of a sentence, with SHAP's Text-masker heuristic on their text), then the groups of
    each enclosing level (sentences of a paragraph, paragraphs), balanced by size."""
    m = len(words)
    clustering = np.zeros((max(m - 1, 0), 4))
    if m <= 1:
        return clustering
    next_node = [m]

    def emit(left: _Group, right: _Group) -> _Group:
        node = next_node[0]
        next_node[0] += 1
        size = left.size + right.size
        clustering[node - m] = (left.node, right.node, size, size)
        return _Group(node, size, left.tokens + right.tokens)

    groups = [_Group(i, 1, TokenGroup([Token(w.strip())])) for i, w in enumerate(words)]
    depth = len(paths[0])
    by_text = lambda a, b: merge_score(a.tokens, b.tokens, [])  # noqa: E731 - SHAP's own score
    by_size = lambda a, b: -float(a.size + b.size)  # noqa: E731
    for level in range(depth, -1, -1):  # innermost first; level 0 is the whole text
        score = by_text if level == depth else by_size
        merged: list[_Group] = []
        merged_paths: list[tuple[int, ...]] = []
        start = 0
        while start < len(groups):
            end = start
            while end < len(groups) and paths[end][:level] == paths[start][:level]:
                end += 1
            merged.append(_merge_adjacent(groups[start:end], score, emit))
            merged_paths.append(paths[start][:level])
            start = end
        groups, paths = merged, merged_paths
    clustering[:, 2] /= clustering[:, 2].max()
    return clustering


def _merge_adjacent(
    groups: list[_Group], score: Callable[[_Group, _Group], float], emit: Callable[[_Group, _Group], _Group]
) -> _Group:
    """Merge neighbours, the best-scoring pair first (SHAP's agglomeration), down to one group."""
    groups = list(groups)
    # A pair's score depends on the pair alone, so only the new group's two pairs are rescored.
    scores = [score(groups[i], groups[i + 1]) for i in range(len(groups) - 1)]
    while len(groups) > 1:
        i = int(np.argmax(scores))  # the first best, as SHAP
        groups[i : i + 2] = [emit(groups[i], groups[i + 1])]
        del scores[i]
        if i > 0:
            scores[i - 1] = score(groups[i - 1], groups[i])
        if i < len(groups) - 1:
            scores[i] = score(groups[i], groups[i + 1])
    return groups[0]


def pair_units(
    texts: tuple[str, str],
    offsets: Sequence[tuple[int, int]],
    sequence: np.ndarray,
    keep: np.ndarray,
    granularity: Granularity,
) -> tuple[Units, list[int]]:
    """The units of a text pair: each text's own (their offsets index into their own text), the
    first text's before the second's, and a tree whose first split separates the two texts, each
    text's own tree under its half. With each unit's text (0 or 1)."""
    halves = [
        text_units(
            texts[i],
            [o if s == i else (0, 0) for o, s in zip(offsets, sequence, strict=True)],  # its own text's
            keep | (sequence != i),
            granularity,
        )
        for i in (0, 1)
    ]
    first, second = halves
    n = len(first.spans)
    of_token = np.where(
        sequence == 0, first.of_token, np.where(second.of_token >= 0, second.of_token + n, -1)
    )
    of_token = np.where(keep, -1, of_token)
    clustering = joined_clustering(first.clustering, n, second.clustering, len(second.spans))
    units = Units(spans=first.spans + second.spans, of_token=of_token, clustering=clustering)
    return units, [0] * n + [1] * len(second.spans)


def joined_clustering(left: np.ndarray, m_left: int, right: np.ndarray, m_right: int) -> np.ndarray:
    """Two trees (SHAP's linkage format) under one new root: the left's leaves first, then the
    right's; the root's distance above every other, so that it is the first split."""
    m = m_left + m_right
    if m_left == 0 or m_right == 0:
        return left if m_right == 0 else right
    rows = []

    def moved(node: float, side: str) -> int:
        node = int(node)
        if side == "left":
            return node if node < m_left else m + (node - m_left)
        return node + m_left if node < m_right else m + (m_left - 1) + (node - m_right)

    for side, tree in (("left", left), ("right", right)):
        for a, b, distance, size in tree:
            rows.append([moved(a, side), moved(b, side), distance, size])
    roots = [m + m_left - 2 if m_left > 1 else 0, m + m - 3 if m_right > 1 else m_left]
    top = max((row[2] for row in rows), default=0.0) + 1.0
    rows.append([roots[0], roots[1], top, m])
    return np.asarray(rows, dtype=float).reshape(-1, 4)
