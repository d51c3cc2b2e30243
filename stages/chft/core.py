"""ChFT, the pure parts (spec ../shared/specs/chft.md 4-5): canonical texts, sentences, word tokens,
the alignment of an ASR hypothesis to its reference, the error-correction pairs and their types,
segments that no pair straddles, CER, and the homophone noisy channel. Chinese and English."""

from __future__ import annotations

import functools
import random
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from stages.chft.numbers import has_number, number_form, number_value, read_numbers_aloud

PAIR_TYPES = ("lexical", "homophone", "punctuation", "itn", "insertion", "deletion")

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_CHAR = re.compile(f"[{_CJK}]")
_SPACE_BETWEEN_CJK = re.compile(f"(?<=[{_CJK}\u3000-\u303f\uff00-\uffef])\\s+(?=[{_CJK}\u3000-\u303f\uff00-\uffef])")
_FULLWIDTH_ALNUM = {c: c - 0xFEE0 for r in ((0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A))
                    for c in range(r[0], r[1] + 1)}


_ASCII_MARK_AFTER_CJK = re.compile(f"(?<=[{_CJK}])\\s*([,.?!;:])(?!\\d)")
_FULL_WIDTH_MARK = {",": "，", ".": "。", "?": "？", "!": "！", ";": "；", ":": "："}


def canonical(text: str) -> str:
    """Spec 4.5: no spaces between CJK characters, full-width letters and digits folded to ASCII,
    Chinese punctuation kept, other whitespace runs made one space; an ASCII mark right after a
    Chinese character made full width (Whisper writes "," in Chinese), so marks compare by meaning,
    not by width (spec 6)."""
    text = text.translate(_FULLWIDTH_ALNUM)
    text = _ASCII_MARK_AFTER_CJK.sub(lambda m: _FULL_WIDTH_MARK[m.group(1)], text)
    text = _SPACE_BETWEEN_CJK.sub("", text)
    return re.sub(r"\s+", " ", text).strip()


def is_punct(text: str) -> bool:
    """Only punctuation (and spaces): no letter, digit or CJK character."""
    return bool(text) and all(unicodedata.category(c)[0] in "PSZ" for c in text)


def sentences(text: str, language: str) -> list[str]:
    """Spec 4.2: cut after 。！？；(and . ! ? ; followed by a space in English) and at newlines,
    the mark kept on the left; concatenated they give back the text."""
    pattern = r"(?<=[。！？；])|(?<=\n)" if language == "zh" else r"(?<=[.!?;])(?=\s)|(?<=\n)"
    return [s for s in re.split(pattern, text) if s]


@functools.cache
def _jieba():
    import jieba

    jieba.setLogLevel(60)
    return jieba


def tokens(text: str, language: str) -> list[str]:
    """Spec 4.6: words (jieba, HMM off, for Chinese; letters and digits runs otherwise), every
    punctuation mark and every space a token of its own; joined they give back the text."""
    if language == "zh":
        out = []
        for t in _jieba().lcut(text, HMM=False):
            out += list(t) if is_punct(t) else [t]
        return out
    return re.findall(r"\w+|\s|[^\w\s]", text)


# -- alignment and pairs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    hyp_span: str
    ref_span: str
    hyp_start: int
    hyp_end: int
    ref_start: int
    ref_end: int
    type: str

    def as_dict(self) -> dict:
        return asdict(self)


def _offsets(toks: Sequence[str]) -> list[int]:
    out = [0]
    for t in toks:
        out.append(out[-1] + len(t))
    return out


def pairs_between(hypothesis: str, reference: str, language: str) -> list[Pair]:
    """Spec 4.7-4.9: token alignment (Levenshtein, rapidfuzz's deterministic opcodes), maximal runs
    of differing tokens as pairs, a pair with nothing on the hypothesis side widened by the matched
    token before it (after it at the start) so it can be found, each pair typed."""
    from rapidfuzz.distance import Levenshtein

    h, r = tokens(hypothesis, language), tokens(reference, language)
    ho, ro = _offsets(h), _offsets(r)
    runs: list[list[int]] = []  # [h1, h2, r1, r2] in tokens
    for op in Levenshtein.opcodes(h, r):
        if op.tag == "equal":
            continue
        if runs and runs[-1][1] == op.src_start and runs[-1][3] == op.dest_start:
            runs[-1][1], runs[-1][3] = op.src_end, op.dest_end
        else:
            runs.append([op.src_start, op.src_end, op.dest_start, op.dest_end])
    widened: list[list] = []  # [h1, h2, r1, r2, kind]
    for h1, h2, r1, r2 in runs:
        kind = "deletion" if h1 == h2 else "insertion" if r1 == r2 else None
        if h1 == h2:  # the ASR dropped text: take the matched token before (or after) along
            if h1 > 0:
                h1, r1 = h1 - 1, r1 - 1
            else:
                h2, r2 = h2 + 1, r2 + 1
            if h2 > len(h):  # nothing to hold on to: the hypothesis is empty
                h1, h2, r1, r2 = 0, 0, 0, len(r)
        if widened and h1 < widened[-1][1]:  # two drops took the same token along: one pair
            last = widened[-1]
            last[1], last[3] = max(last[1], h2), max(last[3], r2)
            last[4] = kind if kind == last[4] else None
        else:
            widened.append([h1, h2, r1, r2, kind])
    pairs = []
    for h1, h2, r1, r2, kind in widened:
        hs, rs = hypothesis[ho[h1]:ho[h2]], reference[ro[r1]:ro[r2]]
        pairs.append(Pair(hs, rs, ho[h1], ho[h2], ro[r1], ro[r2], kind or pair_type(hs, rs)))
    return pairs


def pair_type(hyp_span: str, ref_span: str) -> str:
    """Spec 4.9: punctuation, inverse text normalisation (the same number written otherwise: digits,
    Chinese numerals, English number words, a percent sign), homophone (the same toneless pinyin),
    else lexical. A pair with no number on either side is never ``itn`` ("to day" -> "today")."""
    if is_punct(hyp_span) and is_punct(ref_span):
        return "punctuation"
    a, b = number_value(hyp_span), number_value(ref_span)
    if (a is not None and a == b) or (
            (has_number(hyp_span) or has_number(ref_span)) and number_form(hyp_span) == number_form(ref_span)):
        return "itn"
    if _CJK_CHAR.search(hyp_span) and _CJK_CHAR.search(ref_span) and toneless(hyp_span) == toneless(ref_span):
        return "homophone"
    return "lexical"




def toneless(text: str) -> tuple[str, ...]:
    from pypinyin import lazy_pinyin

    return tuple(p for p in lazy_pinyin(text) if p.strip())


def apply_pairs(hypothesis: str, pairs: Sequence[Pair | dict]) -> str:
    """The hypothesis with every pair's reference span in place of its hypothesis span (right to left)."""
    out = hypothesis
    for p in sorted((x if isinstance(x, dict) else x.as_dict() for x in pairs), key=lambda d: -d["hyp_start"]):
        out = out[:p["hyp_start"]] + p["ref_span"] + out[p["hyp_end"]:]
    return out


def compression_ratio(text: str) -> float:
    """UTF-8 bytes over zlib-compressed bytes (Whisper's loop test): natural text ~1.6-1.9, a looped
    transcript 2.5 and more."""
    import zlib

    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 1.0


def cer(hypothesis: str, reference: str) -> float:
    """Character edits over reference characters: 0 for equal texts, 1 for "" against any text."""
    from rapidfuzz.distance import Levenshtein

    if not reference:
        return 0.0 if not hypothesis else 1.0
    return Levenshtein.distance(hypothesis, reference) / len(reference)


# -- segments (spec 4.10) --------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    hyp_start: int
    hyp_end: int
    ref_start: int
    ref_end: int
    pairs: tuple[Pair, ...]  # offsets re-based to the segment
    sentences: tuple[int, int]  # hypothesis sentences [first, last) the segment began from


def segments(hypothesis: str, reference: str, pairs: Sequence[Pair], language: str, rng: random.Random,
             max_sentences: int = 5, max_chars: int = 300) -> list[Segment]:
    """Consecutive hypothesis sentences in groups of k (uniform in 1..max_sentences, closed early at
    about max_chars), each boundary moved to the nearest place no pair straddles and carried over to
    the reference through the pairs; together the segments are the full texts and their pairs."""
    import bisect

    sents = sentences(hypothesis, language)
    starts = _offsets(sents)
    wanted, k = [], 0
    while k < len(sents):
        j, size, want = k, 0, rng.randint(1, max_sentences)
        while j < len(sents) and j - k < want and (size == 0 or size + len(sents[j]) <= max_chars):
            size += len(sents[j])
            j += 1
        wanted.append(starts[j])
        k = j

    def free(b: int) -> bool:
        return all(not (p.hyp_start < b < p.hyp_end) for p in pairs)

    def nearest_free(b: int) -> int:
        for d in range(len(hypothesis) + 1):
            for c in (b - d, b + d):
                if 0 <= c <= len(hypothesis) and free(c):
                    return c
        return b

    bounds = [0]
    for b in wanted[:-1]:
        c = nearest_free(b)
        if bounds[-1] < c < len(hypothesis):
            bounds.append(c)
    bounds.append(len(hypothesis))
    refs = [b + sum(len(p.ref_span) - len(p.hyp_span) for p in pairs if p.hyp_end <= b) for b in bounds]
    refs[0], refs[-1] = 0, len(reference)
    out = []
    for (h1, h2), (r1, r2) in zip(zip(bounds, bounds[1:], strict=False), zip(refs, refs[1:], strict=False),
                                  strict=True):
        mine = tuple(Pair(p.hyp_span, p.ref_span, p.hyp_start - h1, p.hyp_end - h1, p.ref_start - r1,
                          p.ref_end - r1, p.type) for p in pairs
                     if h1 <= p.hyp_start and p.hyp_end <= h2 and (p.hyp_start < h2 or h1 == h2))
        first = max(bisect.bisect_right(starts, h1) - 1, 0)
        last = max(bisect.bisect_left(starts, h2), first + 1)
        out.append(Segment(h1, h2, r1, r2, mine, (first, min(last, len(sents)))))
    return out


# -- the homophone channel (spec 4.4, NoisyChannelAsr) ----------------------------------------------


@functools.cache
def _homophones() -> dict[str, list[str]]:
    """Toneless pinyin -> the common characters with that reading (GB2312 level 1: the 3,755 most
    used), each read as ``lazy_pinyin`` reads it alone (``nv`` for 女, not ``nu``)."""
    from pypinyin import lazy_pinyin
    from pypinyin.pinyin_dict import pinyin_dict

    table: dict[str, list[str]] = {}
    for code in sorted(pinyin_dict):
        if 0x4E00 <= code <= 0x9FFF and _common(chr(code)):
            table.setdefault(lazy_pinyin(chr(code))[0], []).append(chr(code))
    return table


def _common(ch: str) -> bool:
    try:
        return 0xB0 <= ch.encode("gb2312")[0] <= 0xD7
    except UnicodeEncodeError:
        return False


@dataclass(frozen=True)
class Channel:
    """Rates of the text-level ASR simulator (spec 4.4): per CJK character, a homophone in its place
    or it dropped, a character added; per punctuation mark, dropped or made a comma; numbers read out."""

    homophone: float = 0.03
    deletion: float = 0.005
    insertion: float = 0.005
    punctuation: float = 0.2
    verbalize_numbers: bool = True




def noisy_hypothesis(reference: str, channel: Channel, rng: random.Random) -> str:
    """A hypothesis of ``reference`` as a noisy ASR would write it (Chinese)."""
    from pypinyin import lazy_pinyin

    text = read_numbers_aloud(reference) if channel.verbalize_numbers else reference
    table = _homophones()
    out = []
    for ch in text:
        x = rng.random()
        if _CJK_CHAR.match(ch):
            if x < channel.deletion:
                continue
            if x < channel.deletion + channel.homophone:
                others = [c for c in table.get(lazy_pinyin(ch)[0], []) if c != ch]
                out.append(rng.choice(others) if others else ch)
            else:
                out.append(ch)
            if rng.random() < channel.insertion:
                out.append(ch)
        elif is_punct(ch) and not ch.isspace():
            if x < channel.punctuation / 2:
                continue
            out.append("，" if x < channel.punctuation else ch)
        else:
            out.append(ch)
    return "".join(out)
