"""How ChFT reads numbers (spec ../shared/specs/chft.md 4.4, 4.9): the homophone channel writes
digits as Mandarin speech says them, and the pair typer tells an ``itn`` pair (one number written two
ways: digits, Chinese numerals, English number words, a percent sign) from the rest."""

from __future__ import annotations

import re
import warnings

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
