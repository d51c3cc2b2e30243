"""Ada-LEval's pure parts (spec ../shared/specs/ada-leval.md): TSort items from a book's
paragraphs, and the scorers of both tasks, each twice: ``reference`` reproduces the published
evaluator for comparability, quirks included (BestAnswer takes the highest-numbered label found
anywhere, so "A1" inside "A10" counts and a reply naming several labels scores its last one, issue
#5; TSort compares only as many positions as the reply gives, so a too-short answer passes), and
``strict`` does what the task means (the first label, bounded; a whole permutation, exactly).

The construction code of the paper is not public: block sizes, the heading filter and the
tolerance are ours (spec 4, UNVERIFIED) and parameters of the builder."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Sequence
from html.parser import HTMLParser

N_SEGMENTS = 4  # verified indirectly: the evaluator enumerates permutations of 1..4

# Headings would give the order away (spec 4.1): a keyword with its number ("CHAPTER IV", "Chapter the
# Second", "Chapter I—Loomings", "PART 2 — WINTER", "Letter 4", "Stave Three"), a Chinese chapter
# ("第二章", "第2章 风雪"), or a numeral alone ("XIV.", "12", "二"). A heading is left out when it is a
# paragraph of its own or opens one; a line inside a paragraph is never cut ("Part two of the plan
# was simple.", a manual page's option line "v" or a changelog's wrapped "did." stay).
_ROMAN = r"(?=[ivxlcdm])m{0,4}(?:cm|cd|d?c{0,3})(?:xc|xl|l?x{0,3})(?:ix|iv|v?i{0,3})"  # a valid one only
_UNITS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
          "seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORDINALS = ("first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
             "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth thirtieth last").split()
_WORD_NUMBER = (rf"(?:(?:{'|'.join(_TENS)})(?:[- ](?:{'|'.join(_UNITS[:9])}|{'|'.join(_ORDINALS[:9])}))?|"
                rf"{'|'.join(sorted(_UNITS + _ORDINALS, key=len, reverse=True))})")
_NUMERAL = rf"(?:the\s+)?(?:{_WORD_NUMBER}|{_ROMAN}|\d+)"
_KEYWORD_HEADING = re.compile(
    rf"^\s*(?:chapter|book|act|scene|part|canto|volume|letter|stave|section)\s+{_NUMERAL}(?![\w'])"
    r"[^\n]{0,60}$", re.IGNORECASE)
_ZH_HEADING = re.compile(r"^\s*第\s*[0-9零〇一二两三四五六七八九十百千]+\s*[章回节卷部篇幕集]"
                         r"\s*(?:[:：·—\-\s]\s*\S.{0,20})?$")
_NUMERAL_HEADING = re.compile(rf"^\s*(?:{_ROMAN}|\d+|[零〇一二两三四五六七八九十百千]+)\.?\s*$", re.IGNORECASE)
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")  # the next line keeps its indentation


def is_heading(line: str) -> bool:
    """A heading line (see above): at most 8 words, and a line of more than 3 words that ends as a
    sentence does ("Chapter 5 explains the API.") is text."""
    words = line.split()
    if not words or len(words) > 8 or (len(words) > 3 and line.rstrip().endswith((".", "!", "?", ";"))):
        return False
    return bool(_KEYWORD_HEADING.match(line) or _ZH_HEADING.match(line) or _NUMERAL_HEADING.match(line))


def clean_paragraphs(text: str, count: Callable[[str], int], min_tokens: int = 20,
                     split_over: int | None = None) -> list[str]:
    """A book's paragraphs (blank-line runs; CRLF read as LF) without headings (spec 4.1): a heading
    that is a paragraph of its own, or the opening lines of one, is left out. A paragraph of fewer
    than ``min_tokens`` tokens (a line of dialogue, a title) joins the paragraph after it (the last
    one joins the one before), so the paragraphs read in order restore the text but for its
    headings. A paragraph of more than ``split_over`` tokens is taken line by line (a text with one
    verse or one wrapped line per line and no blank lines, as the KJV and the essays are stored) [ours]."""
    units: list[str] = []
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    for para in _BLANK_LINES.split(text):
        lines = [ln for ln in para.split("\n") if ln.strip()]  # verbatim
        while lines and is_heading(lines[0]):
            lines = lines[1:]
        joined = "\n".join(lines)
        if joined:
            units += lines if split_over is not None and count(joined) > split_over else [joined]
    kept: list[str] = []
    pending: list[str] = []
    for unit in units:
        pending.append(unit)
        merged = "\n".join(pending)
        if count(merged) >= min_tokens:
            kept.append(merged)
            pending = []
    if pending and kept:
        kept[-1] = "\n".join([kept[-1], *pending])
    return kept


def tsort_blocks(counts: Sequence[int], start: int, block_tokens: int,
                 n_segments: int = N_SEGMENTS) -> list[list[int]] | None:
    """Paragraph indices of the n+2 consecutive blocks that start at ``start`` (context before, the n
    segments, context after), each grown by whole paragraphs until it reaches ``block_tokens``
    (spec 4.3); None when the text runs out or a paragraph alone is over twice the block size."""
    blocks, i = [], start
    for _ in range(n_segments + 2):
        block, size = [], 0
        while size < block_tokens:
            if i >= len(counts) or counts[i] > 2 * block_tokens:
                return None
            block.append(i)
            size += counts[i]
            i += 1
        blocks.append(block)
    return blocks


def tsort_answer(shown: Sequence[int]) -> list[int]:
    """``shown[j]`` = the original index (0-based) of the segment labelled j+1; the answer lists,
    for each segment in original order, its label (spec 4.6): reading the labelled segments in
    the answer's order restores the text."""
    return [list(shown).index(i) + 1 for i in range(len(shown))]


def tsort_prompt(before: str, segments: Sequence[str], after: str) -> str:
    """The TSort request (ours, after the task's description): context, labelled segments, context,
    and the answer format."""
    n = len(segments)
    parts = [
        f"You are given the beginning and the end of a passage from a book, and {n} consecutive segments from "
        f"between them, shown out of order and labelled Segment 1 to Segment {n}. Put the segments back in "
        "their original order.",
        f"Reply with the labels in the original order as a JSON list after \"Answer:\", for example "
        f"Answer: {json.dumps(list(range(n, 0, -1)))}.",
        f"Beginning of the passage:\n{before}",
    ]
    parts += [f"Segment {k}:\n{seg}" for k, seg in enumerate(segments, 1)]
    parts += [f"End of the passage:\n{after}",
              f"Now give the original order of the {n} segments as a JSON list after \"Answer:\"."]
    return "\n\n".join(parts)


# -- TSort scoring -------------------------------------------------------------------------------

def _is_subsequence(needle: str, haystack: str) -> bool:
    pos = 0
    for c in needle:
        pos = haystack.find(c, pos) + 1
        if pos == 0:
            return False
    return True


def _unique_permutation(text: str, n: int) -> list[int] | None:
    found = [p for p in itertools.permutations(range(1, n + 1)) if _is_subsequence("".join(map(str, p)), text)]
    return list(found[0]) if len(found) == 1 else None


def parse_tsort_reference(reply: str, n: int = N_SEGMENTS):
    """The published extraction: the text after the first "Answer:" (up to a second one), as JSON
    if it parses (whatever it holds), else the one permutation of 1..n whose digits appear in order,
    else zeros."""
    text = reply.split("Answer:")[1].strip() if "Answer:" in reply else reply
    try:
        return json.loads(text)
    except ValueError:
        return _unique_permutation(text, n) or [0] * n


def tsort_correct_reference(answer: Sequence[int], extracted) -> bool:
    """The published check: position by position over the shorter of the two, so ``[2]`` passes for
    ``[2, 4, 1, 3]`` (the quirk this module does not repeat in :func:`tsort_correct_strict`)."""
    try:
        return all(a == e for a, e in zip(answer, extracted, strict=False))
    except TypeError:  # a JSON number or null: not iterable, never correct
        return False


def parse_tsort_strict(reply: str, n: int = N_SEGMENTS) -> list[int] | None:
    """A whole permutation of 1..n: a JSON list after the first "Answer:" (or in the reply), else the
    one permutation whose digits appear in order; None when there is none."""
    text = reply.split("Answer:")[1] if "Answer:" in reply else reply
    m = re.search(r"\[[^\[\]]*\]", text)
    if m:
        try:
            value = json.loads(m.group(0))
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return value if sorted(value) == list(range(1, n + 1)) else None
    return _unique_permutation(text.strip(), n)


def tsort_correct_strict(answer: Sequence[int], extracted: Sequence[int] | None) -> bool:
    return extracted is not None and list(extracted) == list(answer)


# -- BestAnswer scoring ----------------------------------------------------------------------------

def parse_best_answer_reference(reply: str, n: int) -> str:
    """The published extraction: of labels A1..An found anywhere (as substrings), the highest-numbered;
    else of bare numbers 1..n, the highest; else "???"."""
    for cands, prefix in (([f"A{i}" for i in range(1, n + 1)], ""), ([str(i) for i in range(1, n + 1)], "A")):
        found = [i for i, c in enumerate(cands) if c in reply]
        if found:
            return prefix + cands[max(found)]
    return "???"


def parse_best_answer_strict(reply: str, n: int) -> str | None:
    """The first label A1..An in the reply (after "Answer:" when there is one) whose number is not
    followed by another digit (A1 is not A10); else the first bare number 1..n; else None."""
    text = reply.split("Answer:", 1)[1] if "Answer:" in reply else reply
    for m in re.finditer(r"\bA(\d+)(?!\d)", text):
        if 1 <= int(m.group(1)) <= n:
            return f"A{int(m.group(1))}"
    for m in re.finditer(r"(?<!\d)(?<!\d\.)(\d+)(?!\d|\.\d)", text):  # not part of a decimal
        if 1 <= int(m.group(1)) <= n:
            return f"A{int(m.group(1))}"
    return None


# -- BestAnswer construction (spec 5) --------------------------------------------------------------

class _Text(HTMLParser):
    """HTML to text: paragraphs and list items on lines of their own, code kept as it is."""

    BLOCK = {"p", "pre", "li", "ul", "ol", "blockquote", "h1", "h2", "h3", "h4", "br", "hr", "div", "table", "tr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        self.parts.append(data)


def strip_html(body: str) -> str:
    parser = _Text()
    parser.feed(body)
    parser.close()
    return re.sub(r"\n{3,}", "\n\n", "".join(parser.parts)).strip()


def parse_tags(tags: str | None) -> tuple[str, ...]:
    """A dump's Tags attribute: ``<python><list>`` (older dumps) or ``|python|list|`` (newer)."""
    if not tags:
        return ()
    return tuple(t for t in re.split(r"[<>|]+", tags) if t)


def jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 0.0


def best_answer_prompt(question: str, candidates: Sequence[str]) -> str:
    """The BestAnswer request (ours, after the task's description): the question, the labelled
    candidates, and the reply format."""
    parts = ["Below are a question and several answers to it, labelled A1, A2, and so on. Decide which answer "
             "is the most helpful one. Reply with its label only, after \"Answer:\", for example Answer: A2.",
             f"The question:\n{question}", "The answers:"]
    parts += [f"A{k}:\n{c}" for k, c in enumerate(candidates, 1)]
    parts.append("Which answer is the most helpful? Reply with \"Answer:\" and its label.")
    return "\n\n".join(parts)
