"""The Indonesian "simple hack" (spec ../shared/specs/indonesian-stopword-hack.md), the pure parts:
words of a text, the four removals in their fixed order, the fallback, head truncation to L
subword tokens with the tokenizer's own special tokens, and what share of a document's content
words a truncation keeps."""

from __future__ import annotations

import bisect
import functools
import importlib.metadata
import itertools
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

HACKS = ("punctuation", "stopwords", "low_freq", "recurring")  # spec 4, steps 2-5, applied in this order
STOPWORD_LISTS = ("spacy", "stopwordsiso", "sastrawi")


@functools.lru_cache(maxsize=1 << 16)  # words repeat: a corpus has far fewer distinct ones than tokens
def is_punct(token: str) -> bool:
    """Only Unicode punctuation and symbols (spec 4.2); numbers are not punctuation."""
    return bool(token) and all(unicodedata.category(c)[0] in "PS" for c in token)


def words(text: str) -> list[str]:
    """Spec 4.1: split on whitespace, then leading and trailing punctuation off each piece, one mark
    a token; inner hyphens and apostrophes stay (``anak-anak``, ``firman-Nya``)."""
    out: list[str] = []
    for piece in text.split():
        # A piece that starts and ends with an alphanumeric character (str.isalnum) has no punctuation
        # to split off: no such character is of category P* or S* (checked over every code point).
        if piece[0].isalnum() and piece[-1].isalnum():
            out.append(piece)
            continue
        start, end = 0, len(piece)
        while start < end and is_punct(piece[start]):
            start += 1
        while end > start and is_punct(piece[end - 1]):
            end -= 1
        out += list(piece[:start])
        if start < end:
            out.append(piece[start:end])
        out += list(piece[end:])
    return out


@functools.cache
def stopword_list(name: str) -> tuple[frozenset[str], str]:
    """(lower-cased stop words, "name version") for a list by name or a file of one word per line."""
    if name == "spacy":
        from spacy.lang.id.stop_words import STOP_WORDS

        words_ = STOP_WORDS
        version = f"spacy-id {importlib.metadata.version('spacy')}"
    elif name == "stopwordsiso":
        import stopwordsiso

        words_ = stopwordsiso.stopwords("id")
        version = f"stopwordsiso-id {importlib.metadata.version('stopwordsiso')}"
    elif name == "sastrawi":
        from Sastrawi.StopWordRemover.StopWordRemoverFactory import StopWordRemoverFactory

        words_ = StopWordRemoverFactory().get_stop_words()
        version = f"sastrawi {importlib.metadata.version('Sastrawi')}"
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            raise ValueError(f"stop-word list {name!r}: one of {', '.join(STOPWORD_LISTS)}, or a file of one word "
                             "per line")
        words_ = [w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]
        version = f"file {path.name}"
    return frozenset(w.lower() for w in words_), version


@dataclass(frozen=True)
class Hack:
    """Which removals run (True: ``remove``); the name is what records and metrics carry."""

    name: str
    punctuation: bool = False
    stopwords: bool = False
    low_freq: bool = False
    recurring: bool = False

    def as_dict(self) -> dict[str, str]:
        return {h: "remove" if getattr(self, h) else "keep" for h in HACKS}


PRESETS = {
    "none": Hack("none"),  # plain head truncation
    "stopwords": Hack("stopwords", stopwords=True),  # the paper's best: stop words out, punctuation and rare words in
    "punctuation": Hack("punctuation", punctuation=True),
    "low_freq": Hack("low_freq", low_freq=True),
    "recurring": Hack("recurring", recurring=True),
}


def grid() -> list[Hack]:
    """All 16 on/off combinations (spec 4.8, for ablations), named by what they remove."""
    out = []
    for flags in itertools.product((False, True), repeat=len(HACKS)):
        removed = [h for h, on in zip(HACKS, flags, strict=True) if on]
        out.append(Hack("+".join(removed) or "none", *flags))
    return out


@dataclass(frozen=True)
class Hacked:
    kept: list[int]  # indices of the input words that remain, in order
    removed: dict[str, int]  # words each step removed
    fallback: bool


def apply_hack(ws: Sequence[str], hack: Hack, stops: frozenset[str], rare: Iterable[str] = (),
               min_words: int = 16, lowered: Sequence[str] | None = None) -> Hacked:
    """Spec 4.2-4.6: the removals in order, each on the previous one's output; fewer than
    ``min_words`` left: the unmodified words, flagged. ``lowered``: the words lower-cased, when the
    caller has them already."""
    low = lowered if lowered is not None else [w.lower() for w in ws]
    rare_set = set(rare)
    kept = list(range(len(ws)))
    removed = {}
    for step in HACKS:
        if not getattr(hack, step):
            continue
        before = len(kept)
        if step == "punctuation":
            kept = [i for i in kept if not is_punct(ws[i])]
        elif step == "stopwords":
            kept = [i for i in kept if low[i] not in stops]
        elif step == "low_freq":
            kept = [i for i in kept if is_punct(ws[i]) or low[i] not in rare_set]
        else:
            seen: set[str] = set()
            out = []
            for i in kept:
                w = low[i]
                if is_punct(w) or w not in seen:
                    out.append(i)
                    seen.add(w)
            kept = out
        removed[step] = before - len(kept)
    if len(kept) < min(min_words, len(ws)):
        return Hacked(list(range(len(ws))), removed, True)
    return Hacked(kept, removed, False)


def is_content(word: str, stops: frozenset[str]) -> bool:
    return not is_punct(word) and word.lower() not in stops


@dataclass(frozen=True)
class Truncation:
    ids: list[int]  # the tokenizer's special tokens around the first content tokens
    n_full: int  # all tokens of the untruncated text, special tokens included
    words_kept: int  # output words whose first subword token is kept
    chars_kept: int  # characters of the text the kept tokens cover


def truncations(tokenizer, text: str, lengths: Sequence[int]) -> dict[int, Truncation]:
    """Head truncation to each L (spec 4.7): the first L - (special tokens) content tokens, with the
    special tokens the tokenizer puts before and after (BERT: [CLS] ... [SEP]); one encoding serves
    every L, so shorter ones are prefixes of longer ones."""
    enc = tokenizer.encode(text)
    ids, mask, offsets = enc.ids, enc.special_tokens_mask, enc.offsets  # each access builds a new list
    n = len(ids)
    head = next((k for k in range(n) if not mask[k]), n)
    tail = next((k for k in range(n) if not mask[n - 1 - k]), 0) if head < n else 0
    starts = _word_starts(text)
    out = {}
    for length in lengths:
        room = min(max(length - head - tail, 0), n - head - tail)
        chars = offsets[head + room - 1][1] if room else 0
        words_kept = bisect.bisect_left(starts, chars)  # tokens run contiguously: a word begun is kept
        out[length] = Truncation(ids[:head + room] + ids[n - tail:], n, words_kept, chars)
    return out


@dataclass(frozen=True)
class Encoded:
    """What :func:`truncations` reads of an encoding (the fields of a ``tokenizers.Encoding``)."""

    ids: list[int]
    special_tokens_mask: list[int]
    offsets: Sequence[tuple[int, int]]


# Tokenizers whose encoding of a text is the encodings of its space-separated pieces, one after
# another: the normalizer maps characters one by one, the pre-tokenizer splits at every space (and
# inside a piece only), and the model sees one pre-token at a time. BERT's WordPiece is one.
_PER_PIECE_NORMALIZERS = {"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents"}
_PER_PIECE_PRE_TOKENIZERS = {"BertPreTokenizer", "WhitespaceSplit", "Whitespace"}


def encodes_per_piece(tokenizer) -> bool:
    """Whether ``tokenizer`` (a ``tokenizers.Tokenizer``) is one of those, from its own JSON."""
    import json

    config = json.loads(tokenizer.to_str())
    norm = config.get("normalizer") or {"type": "Sequence", "normalizers": []}
    norms = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm]
    pre = config.get("pre_tokenizer") or {}
    # Added tokens are matched in the raw text before anything else: one holding a space spans two
    # pieces, and one that strips the space beside it moves the offsets of its neighbours.
    added_local = all(not t.get("lstrip") and not t.get("rstrip") and not any(c.isspace() for c in t["content"])
                      for t in config.get("added_tokens") or [])
    return (config.get("model", {}).get("type") == "WordPiece" and pre.get("type") in _PER_PIECE_PRE_TOKENIZERS
            and all(n.get("type") in _PER_PIECE_NORMALIZERS for n in norms) and added_local)


class PieceEncoder:
    """Encodes a text piece by piece, each distinct piece once: the same ids, special-token mask and
    offsets as ``tokenizer.encode(text)`` for a tokenizer that :func:`encodes_per_piece`, at the
    cost of a dictionary lookup per word (words repeat: a corpus has far fewer distinct ones than
    occurrences). Other tokenizers are passed through to their own ``encode``."""

    def __init__(self, tokenizer, max_cached: int = 200_000):  # about 1.4 KB a piece: ~300 MB at most
        self.tokenizer = tokenizer
        self.per_piece = encodes_per_piece(tokenizer)
        self.max_cached = max_cached
        self._pieces: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}
        if not self.per_piece:
            return
        probe = tokenizer.encode("a")
        mask = probe.special_tokens_mask
        first = mask.index(0)
        last = len(mask) - 1 - mask[::-1].index(0)
        self._head, self._tail = probe.ids[:first], probe.ids[last + 1:]
        self._head_offsets, self._tail_offsets = probe.offsets[:first], probe.offsets[last + 1:]

    def _piece(self, piece: str) -> tuple[list[int], list[tuple[int, int]]]:
        found = self._pieces.get(piece)
        if found is None:
            enc = self.tokenizer.encode(piece, add_special_tokens=False)
            found = (enc.ids, enc.offsets)
            if len(self._pieces) < self.max_cached:
                self._pieces[piece] = found
        return found

    def encode(self, text: str):
        if not self.per_piece:
            return self.tokenizer.encode(text)
        ids = list(self._head)
        ends: list[int] = []  # tokens up to the end of each piece
        pieces: list[tuple[int, list[tuple[int, int]]]] = []  # (start in text, offsets within the piece)
        pos = 0
        for piece in text.split(" "):
            if piece:
                piece_ids, piece_offsets = self._piece(piece)
                if piece_ids:
                    ids += piece_ids
                    ends.append(len(ids))
                    pieces.append((pos, piece_offsets))
            pos += len(piece) + 1
        n_content = len(ids) - len(self._head)
        ids += self._tail
        mask = [1] * len(self._head) + [0] * n_content + [1] * len(self._tail)
        return Encoded(ids, mask, _PieceOffsets(self._head_offsets, ends, pieces, self._tail_offsets, len(ids)))


class _PieceOffsets(Sequence):
    """The offsets of a piece-by-piece encoding, each made when asked for (truncation reads three)."""

    def __init__(self, head, ends, pieces, tail, n):
        self._head, self._ends, self._pieces, self._tail, self._n = head, ends, pieces, tail, n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(self._n))]
        if k < 0:
            k += self._n
        if not 0 <= k < self._n:
            raise IndexError(k)
        if k < len(self._head):
            return self._head[k]
        content_end = self._ends[-1] if self._ends else len(self._head)
        if k >= content_end:
            return self._tail[k - content_end]
        p = bisect.bisect_right(self._ends, k)
        start, offsets = self._pieces[p]
        a, b = offsets[k - (self._ends[p - 1] if p else len(self._head))]
        return (a + start, b + start)


def _word_starts(text: str) -> list[int]:
    starts, pos = [], 0
    for w in text.split(" "):
        starts.append(pos)
        pos += len(w) + 1
    return starts if text else []


def content_kept_prefixes(lowered: Sequence[str], content: Sequence[bool], kept: Sequence[int]
                          ) -> tuple[list[int], list[int]]:
    """For every k, the content-word occurrences and the distinct content words among the first k
    kept words: one pass serves every truncation length (what :func:`content_kept` counts, for
    each ``words_kept`` at once)."""
    occ, types = [0], [0]
    seen: set[str] = set()
    n_occ = 0
    for i in kept:
        if content[i]:
            n_occ += 1
            seen.add(lowered[i])
        occ.append(n_occ)
        types.append(len(seen))
    return occ, types


def content_kept(ws: Sequence[str], kept: Sequence[int], words_kept: int, stops: frozenset[str],
                 content: Sequence[int] | None = None) -> tuple[float, float]:
    """Of the input's content words (neither punctuation nor stop words), the share of occurrences
    and of distinct words that are among the first ``words_kept`` output words. ``content``: the
    content words' indices, when the caller has them already."""
    if content is None:
        content = [i for i, w in enumerate(ws) if is_content(w, stops)]
    if not content:
        return 1.0, 1.0
    survived = set(kept[:words_kept])
    occ = sum(1 for i in content if i in survived) / len(content)
    types = {ws[i].lower() for i in content}
    return occ, len({ws[i].lower() for i in content if i in survived}) / len(types)
