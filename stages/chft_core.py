"""ChFT, the pure parts (spec ../shared/specs/chft.md 4-5): canonical texts, sentences, word tokens,
the alignment of an ASR hypothesis to its reference, the error-correction pairs and their types,
segments that no pair straddles, CER, and the homophone noisy channel. Chinese and English."""

from __future__ import annotations

import functools
import json
import random
import re
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

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


_EN_NUMBERS = {w: k for k, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())} | {w: 10 * k for k, w in enumerate(
        "twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_EN_SCALES = {"hundred": 100, "thousand": 1000, "million": 10 ** 6, "billion": 10 ** 9}
_EN_WORD = "|".join(sorted([*_EN_NUMBERS, *_EN_SCALES], key=len, reverse=True))
_EN_RUN = re.compile(rf"\b(?:{_EN_WORD})(?:(?:[\s-]+|[\s-]+and[\s-]+)(?:{_EN_WORD}))*\b", re.IGNORECASE)
_PERCENT = re.compile(r"(\d)\s*(?:percent|per cent)\b", re.IGNORECASE)
_NUMERAL_CHAR = re.compile(r"[0-9零〇一二两三四五六七八九十百千万亿]")


def english_number(words: str) -> int | None:
    """The value of English number words ("one hundred and twenty" -> 120), None if not one."""
    total = current = 0
    parts = [w for w in re.split(r"[\s-]+", words.lower().strip()) if w and w != "and"]
    if not parts:
        return None
    for w in parts:
        if w in _EN_NUMBERS:
            current += _EN_NUMBERS[w]
        elif w == "hundred":
            current = (current or 1) * 100
        elif w in _EN_SCALES:
            total += (current or 1) * _EN_SCALES[w]
            current = 0
        else:
            return None
    return total + current


def has_number(text: str) -> bool:
    return bool(_NUMERAL_CHAR.search(text) or _EN_RUN.search(text))


def number_form(text: str) -> str:
    """The text with every number in digits (Chinese numerals, English number words, "percent" as %)
    and no spaces or thousands separators: two spans that differ only in number form read the same."""
    text = _EN_RUN.sub(lambda m: str(english_number(m.group(0))), text)
    text = _PERCENT.sub(r"\1%", numbers_read(text))
    return re.sub(r"(?<=\d)[,，](?=\d{3})|\s", "", text)


def number_value(text: str) -> float | None:
    """The number a span writes, in digits or in Chinese numerals; None when it is not one."""
    t = text.strip().replace(",", "").replace("，", "")
    if not t:
        return None
    try:
        return float(t)
    except ValueError:
        pass
    if not re.fullmatch(r"[零〇一二两三四五六七八九十百千万亿点负]+", t):
        return None
    try:
        import cn2an

        with warnings.catch_warnings():  # cn2an warns, then raises, on what is not a number
            warnings.simplefilter("ignore")
            return float(cn2an.cn2an(t, "smart"))
    except (ValueError, KeyError, IndexError):
        return None


def numbers_read(text: str) -> str:
    """The text with its Chinese numerals written in digits (``二零二四年五月`` -> ``2024年5月``)."""
    if not re.search(r"[零〇一二两三四五六七八九十百千万亿]", text):
        return text
    try:
        import cn2an

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cn2an.transform(text, "cn2an")
    except (ValueError, KeyError, IndexError):
        return text


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


_DIGIT_ZH = dict(zip("0123456789", "零一二三四五六七八九", strict=True))


def _digits(s: str) -> str:
    return "".join(_DIGIT_ZH[c] for c in s)


def _number_read(m: re.Match) -> str:
    whole, frac = m.group(1), m.group(2)
    if len(whole) > 6 or (len(whole) > 1 and whole[0] == "0"):  # an id, a phone number, "007": digit by digit
        whole = _digits(whole)
    if frac and len(frac) > 8:
        return f"{whole}点{_digits(frac)}"
    return whole + (f".{frac}" if frac else "")


def _spoken_forms(text: str) -> str:
    """What cn2an would misread, put as speech says it first: a date 2024-01-05 (or 2024/1/5) as
    2024年1月5日, a range 50-60 as 50到60, an amount with thousands separators as a number (一百万), an
    id or phone number of more than 6 digits (or with a leading zero) digit by digit, a long
    decimal's digits one by one."""
    import cn2an

    text = re.sub(r"\b(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})\b", lambda m: f"{m[1]}年{int(m[2])}月{int(m[3])}日", text)
    amount = re.compile(r"(?<![\d.])\d{1,3}(?:,\d{3}){1,4}(?:\.\d+)?(?![\d,])")  # 1,000,000 and 12,345.6
    text = amount.sub(lambda m: cn2an.an2cn(m.group(0).replace(",", "")), text)
    text = re.sub(r"\d+(?:-\d+){2,}", lambda m: _digits(m.group(0).replace("-", "")), text)  # 138-0013-8000
    text = re.sub(r"(?<=\d)\s*[-~～](?=\d)", "到", text)
    return re.sub(r"(\d+)(?:\.(\d+))?", _number_read, text)


def read_numbers_aloud(text: str) -> str:
    """Digits as Mandarin speech writes them, the way the speech path's ASR output is read back
    (``cn2an.transform``): a year digit by digit (2024年 -> 二零二四年), 5% as 百分之五, 123 as 一百二十三;
    dates, ranges, ids and long decimals first put as speech says them (:func:`_spoken_forms`)."""
    import cn2an

    text = _spoken_forms(text)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cn2an.transform(text, "an2cn")
    except (ValueError, KeyError, IndexError):  # what cn2an cannot read stays a digit string, read out
        return re.sub(r"\d", lambda m: _DIGIT_ZH[m.group(0)], text)


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


# -- scoring a corrector (spec 5) --------------------------------------------------------------------


def without_punct(text: str) -> str:
    return "".join(c for c in text if not is_punct(c))


def parse_predicted_pairs(reply: str) -> list[dict] | None:
    """A JSON list of ``{"wrong", "right", "hyp_start"}`` from a model's reply (a fenced block is
    unwrapped); None when the reply is not such a list."""
    text = reply.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if fenced:
        text = fenced.group(1).strip()
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, list) or not all(isinstance(x, dict) and isinstance(x.get("wrong"), str)
                                             and isinstance(x.get("right"), str) for x in data):
        return None
    return data


def apply_predicted_pairs(hypothesis: str, predicted: list[dict]) -> str:
    """The hypothesis with each predicted pair applied where it is found: at its ``hyp_start`` when
    the text there is its ``wrong`` span, else at the first occurrence; a pair found nowhere, or
    overlapping one already placed, is left out (a model's slip costs that pair, not the rest)."""
    placed: list[tuple[int, int, str]] = []
    for x in predicted:
        wrong, start = x["wrong"], x.get("hyp_start")
        if not wrong:
            continue
        if not (isinstance(start, int) and hypothesis[start:start + len(wrong)] == wrong):
            start = hypothesis.find(wrong)
        if start < 0 or any(start < e and s < start + len(wrong) for s, e, _ in placed):
            continue
        placed.append((start, start + len(wrong), x["right"]))
    out = hypothesis
    for s, e, right in sorted(placed, reverse=True):
        out = out[:s] + right + out[e:]
    return out


def score_correction(hypothesis: str, reference: str, reply: str, target: str = "text",
                     pairs: Sequence[Pair | dict] = ()) -> dict[str, float]:
    """Spec 5: CER before and after a model's correction, also with punctuation removed (a, b); the
    punctuation counts that P/R/F1 add up over items (c); and of the item's ``itn`` pairs, how many
    the correction writes as the reference does (d). ``target`` json: the reply's pairs applied to
    the hypothesis, an invalid reply being no correction."""
    if target == "json":
        predicted = parse_predicted_pairs(reply)
        corrected = apply_predicted_pairs(hypothesis, predicted) if predicted is not None else hypothesis
        valid = float(predicted is not None)
    else:
        corrected, valid = reply, 1.0
    itn = [x for x in (q if isinstance(q, dict) else q.as_dict() for q in pairs) if x["type"] == "itn"]
    at = _matched(reference, canonical(corrected)) if itn else []  # one alignment for all the pairs
    itn_right = sum(1 for x in itn if _restored(at, x["ref_start"], x["ref_end"]))
    # all three canonical: a segment may begin with the space a reply would not repeat
    hypothesis, reference, corrected = canonical(hypothesis), canonical(reference), canonical(corrected)
    tp, made, gold = punctuation_counts(corrected, reference)
    return {"cer_before": cer(hypothesis, reference), "cer_after": cer(corrected, reference),
            "cer_before_nopunct": cer(without_punct(hypothesis), without_punct(reference)),
            "cer_after_nopunct": cer(without_punct(corrected), without_punct(reference)), "json_valid": valid,
            "punct_correct": tp, "punct_made": made, "punct_gold": gold, "itn_right": itn_right,
            "itn_pairs": len(itn)}


def _matched(reference: str, output: str) -> list[int | None]:
    """For each character of ``reference``, the character of ``output`` the character alignment
    (Levenshtein, rapidfuzz) matches it to, or None where it is substituted or deleted."""
    from rapidfuzz.distance import Levenshtein

    at: list[int | None] = [None] * len(reference)
    for op in Levenshtein.opcodes(reference, output):
        if op.tag == "equal":
            for k in range(op.src_end - op.src_start):
                at[op.src_start + k] = op.dest_start + k
    return at


def _is_mark(ch: str) -> bool:
    return not ch.isspace() and is_punct(ch)


def punctuation_counts(output: str, reference: str) -> tuple[int, int, int]:
    """(correct, made, gold) punctuation marks (spec 5c): a reference mark is correct when the
    alignment matches it to the same mark in the output; made = the output's marks."""
    at = _matched(reference, output)
    gold = [i for i, ch in enumerate(reference) if _is_mark(ch)]
    return sum(1 for i in gold if at[i] is not None), sum(1 for ch in output if _is_mark(ch)), len(gold)


def _restored(at: list[int | None], start: int, end: int) -> bool:
    """Whether the output writes ``reference[start:end]`` as the reference does (spec 5d): every
    character of the span matched, in one run, by the alignment ``at`` (:func:`_matched`)."""
    part = at[start:end]
    return bool(part) and all(x is not None for x in part) and part[-1] - part[0] == end - start - 1
