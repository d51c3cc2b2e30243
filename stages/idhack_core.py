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
               min_words: int = 16) -> Hacked:
    """Spec 4.2-4.6: the removals in order, each on the previous one's output; fewer than
    ``min_words`` left: the unmodified words, flagged."""
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
            kept = [i for i in kept if ws[i].lower() not in stops]
        elif step == "low_freq":
            kept = [i for i in kept if is_punct(ws[i]) or ws[i].lower() not in rare_set]
        else:
            seen: set[str] = set()
            out = []
            for i in kept:
                w = ws[i].lower()
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


def _word_starts(text: str) -> list[int]:
    starts, pos = [], 0
    for w in text.split(" "):
        starts.append(pos)
        pos += len(w) + 1
    return starts if text else []


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
