"""LongWriter (Bai et al., 2024) and minimum-tuning curation (Chen et al., 2024): the pure parts
(spec ../shared/specs/longwriter.md 3.3-3.5, 3.7, 3.8).

- :func:`count_words`: LongBench-Write's word count (CJK ideographs + ASCII letter runs).
- :func:`length_score`: S_l of a required and a produced length.
- :func:`required_length`: the length a prompt asks for, in two modes: ``reference`` reproduces
  evalscope's ``data_etl.py`` rules with their quirks (the 6,000 -> 1,748 -> 666 counts depend on
  them); ``better`` reads what those rules miss ("10,000 words", "3000-word", "三千五百字", "1.5万字").
- :func:`parse_plan`: AgentWrite's plan lines, validated (preambles, bullets, over 50 steps).
- :func:`plan_prompt`, :func:`write_prompt`, :func:`assemble`: the writer's prompts and output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# -- LongBench-Write ----------------------------------------------------------------------------------

_CJK = re.compile(r"[\u4e00-\u9fff]")
_ASCII_WORD = re.compile(r"\b[a-zA-Z]+\b")


def count_words(text: str) -> int:
    """CJK ideographs (U+4E00-U+9FFF) plus maximal ASCII-letter runs at word boundaries; digits,
    punctuation and other scripts count zero (spec 3.7, 5)."""
    return len(_CJK.findall(text)) + len(_ASCII_WORD.findall(text))


def length_score(required: float, produced: float) -> float:
    """S_l in [0, 100]: 100 at the required length, 0 at 4x or a third of it (spec 3.7)."""
    if required <= 0 or produced <= 0:
        raise ValueError(f"lengths must be positive (required {required}, produced {produced})")
    if produced > required:
        return 100 * max(0.0, 1 - (produced / required - 1) / 3)
    return 100 * max(0.0, 1 - (required / produced - 1) / 2)


# -- required length (minimum tuning, spec 3.8) -------------------------------------------------------

_DIGIT_OF = {"零": 0, "一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9, "两": 2,
             "俩": 2}
_UNIT_OF = {"十": 10, "百": 100, "千": 1000, "万": 10000}


def _reference_candidates(text: str) -> list:
    """The reference's candidates, typed as it types them: strings for Arabic digits, integers for
    a Chinese numeral before 百/千/万 — so "5000字" and "五千字" in one prompt are two values."""
    found: list = re.findall(r"(\d+)字", text)
    for groups in re.findall(r"(.)百字|(.)千字|(.)万字", text):
        for scale, ch in zip((100, 1000, 10000), groups, strict=True):
            if ch and ch in _DIGIT_OF:
                found.append(_DIGIT_OF[ch] * scale)
    found += re.findall(r"(\d+) words", text)
    return found


def _chinese_number(s: str) -> int | None:
    """A Chinese numeral up to the ten-thousands (三千五百, 两万, 一万二千), or digits read one by one
    (二〇〇〇), else None."""
    if len(s) > 1 and all(ch in _DIGIT_OF or ch == "〇" for ch in s):
        return int("".join(str(_DIGIT_OF.get(ch, 0)) for ch in s))
    total, section, digit = 0, 0, None
    for ch in s:
        if ch in _DIGIT_OF:
            digit = _DIGIT_OF[ch]
        elif ch in _UNIT_OF:
            unit = _UNIT_OF[ch]
            if unit == 10000:
                total += (section + (digit or 0)) * unit
                section, digit = 0, None
            else:
                section += (1 if digit is None else digit) * unit
                digit = None
        else:
            return None
    return total + section + (digit or 0)


_NUM = r"\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?"
_ZH_NUM = r"[零〇一二两三四五六七八九十百千万]+"
_EITHER = rf"(?:{_NUM}|{_ZH_NUM})"
_RANGE = r"(?:到|至|-|–|—|~|～)"
# what may follow a length after its label: a unit, a range, an "about", or the clause's end (so that
# "字数一定要多" or "字数千万别太少" read no number)
_ZH_END = r"(?=\s*(?:万|千)?\s*(?:个)?(?:字|汉字|词|左右|以上|以内|之间|上下|到|至|-|–|—|~|～|[，。,.;；!！?？]|$))"
_BETTER_PATTERNS = (
    # a length after its label: "字数在三千到五千之间", "字数五千左右", "Word count: 1500" (a range: its upper bound)
    (re.compile(rf"(?:字数|字數)(?:要求)?\s*[:：]?\s*(?:一般)?(?:在|为|為|是|约|大约|大概|控制在|不少于|不低于|不超过|至少|最少)?"
                rf"\s*({_EITHER}){_ZH_END}\s*(万|千)?(?:\s*{_RANGE}\s*({_EITHER}){_ZH_END}\s*(万|千)?)?"), "label"),
    (re.compile(rf"\b(?:word count|word limit|number of words)\s*(?:[:：]|is|of|should be)?\s*"
                rf"(?:about|around|approximately|roughly|at least|at most|~)?\s*({_NUM})\s*(k\b|thousand\b)?"
                rf"(?>(?:\s*(?:-|–|—|to)\s*({_NUM})\s*(k\b|thousand\b)?)?)"
                r"(?!\s*(?:%|percent|characters|tokens|pages|paragraphs|sentences|lines|minutes|\d))", re.I),
     "label_en"),
    # ranges first: "3000-5000字", "3,000 to 5,000 words" -> the upper bound, as the reference reads ranges
    (re.compile(rf"(?:{_NUM})\s*(?:-|–|—|~|～|到|至|to)\s*({_NUM})\s*(万)?\s*(?:个)?(?:字|汉字|words?\b)", re.I),
     "range"),
    (re.compile(rf"({_NUM})\s*(万|千)?\s*(?:个)?(?:字|汉字)"), "zh"),
    (re.compile(rf"({_NUM})[\s-]*(?:words?)\b", re.I), "en"),
    (re.compile(r"([零一二三四五六七八九两俩十百千万]+)(?:个)?(?:字|汉字)"), "zh_numeral"),
)


def _better_candidates(text: str) -> set[int]:
    values: set[int] = set()
    taken: list[tuple[int, int]] = []
    for pattern, kind in _BETTER_PATTERNS:
        for m in pattern.finditer(text):
            if any(a < m.end() and m.start() < b for a, b in taken):
                continue  # part of a longer match already read (a range's bounds)
            if kind in ("label", "label_en"):
                value, scale = (m.group(3), m.group(4)) if m.group(3) else (m.group(1), m.group(2))
                if kind == "label_en":
                    scale = "千" if scale else None  # "2k", "2 thousand"
                n = _number(value, scale)
                if not n:
                    continue
            elif kind == "zh_numeral":
                n = _chinese_number(m.group(1))
                if n is None or n == 0 or m.group(1) in ("十", "百", "千", "万"):
                    continue  # "数千字", "千字文": no number given
            else:
                n = _number(m.group(1), m.group(2) if m.lastindex and m.lastindex >= 2 else None)
                if n is None:
                    continue
            values.add(int(round(n)))
            taken.append((m.start(), m.end()))
    return values


MAX_LENGTH = 10 ** 8  # a stated length beyond this is no length (and no float overflow)


def _number(value: str, scale: str | None = None) -> int | None:
    """An Arabic ("1,500", "1.5") or Chinese ("三千五百", "二〇〇〇") number, times a 万/千 after it;
    None for a bare unit ("千"), a numeral that does not parse, or one past ``MAX_LENGTH``."""
    if value[0].isdigit():
        digits = value.replace(",", "")
        if len(digits.split(".")[0]) > 9:
            return None
        n = float(digits)
    elif value in ("十", "百", "千", "万") or (n := _chinese_number(value)) is None:
        return None
    n = n * {"万": 10000, "千": 1000}.get(scale or "", 1)
    return int(round(n)) if 0 < n <= MAX_LENGTH else None


def required_length(text: str, mode: str = "reference") -> int | None:
    """The one length a prompt asks for, or None when it names none or several (spec 3.8, 6).
    ``reference`` may return 0 (it reads "10,000 words" as "000"); the length filter drops it."""
    if mode == "reference":
        values = set(_reference_candidates(text))
        return int(next(iter(values))) if len(values) == 1 else None
    if mode == "better":
        values = _better_candidates(text)
        return next(iter(values)) if len(values) == 1 else None
    raise ValueError(f"required-length mode '{mode}' (reference, better)")


# -- the instruction pool (spec 3.1) ----------------------------------------------------------------

# A request for a long piece [ours: the paper's selection was a GPT-4o call, its prompt unpublished]:
# a long form asked for with a word that asks for length, a book-length form (a novel, a thesis),
# or a report asked for in detail; never a question about length ("How long is a novel?") nor a
# request that names a short size ("in three sentences", "a tweet").
_LONG_FORMS = re.compile(
    r"\b(?:essay|novel|novella|story|report|article|paper|thesis|dissertation|chapter|book|guide|manual|"
    r"tutorial|proposal|white ?paper|screenplay|biography)s?\b|(?:论文|小说|报告|文章|故事|剧本|教程|指南|综述|传记)",
    re.I)
_BOOK_LENGTH = re.compile(r"\b(?:novel|novella|thesis|dissertation|screenplay)s?\b|(?:小说|论文|剧本|一本书)", re.I)
_DEPTH_FORMS = re.compile(r"\b(?:report|white ?paper|biography|literature review)s?\b|(?:报告|综述|传记)", re.I)
_LONG_ASKS = re.compile(
    r"\b(?:long|lengthy|in-depth|in depth|comprehensive|thorough|extensive|full-length|multi-chapter|"
    r"several chapters|exhaustive)\b|(?:长篇|深入|全面|详尽|万字|数千字|几千字)", re.I)
_DEPTH_ASKS = re.compile(r"\bdetailed\b|详细", re.I)
_SHORT_SIZE = re.compile(
    r"\b(?:in (?:one|two|three|four|five|a few|\d+) (?:sentences?|lines?|paragraphs?|bullet points?|words?)|"
    r"(?:one|a single|a) paragraph|one sentence|briefly|brief|short|concise|tweet|haiku|limerick)\b|"
    r"(?:一句话|一段话|简短|简要|简单地|几句话)", re.I)
_QUESTION = re.compile(r"[?？]\s*$")
_ASKS_TO_WRITE = re.compile(r"\b(?:write|draft|compose|create|produce|generate)\b|(?:写|撰写|创作|编写)", re.I)
POOL_RULE_VERSION = "longforge-pool-1"


def needs_long_output(instruction: str, min_required_words: int = 2000) -> tuple[bool, str]:
    """(keep, why) for the instruction pool's rule. Never a request that names a short size, nor a
    question that asks for no writing. Else: a stated length of at least ``min_required_words`` (the
    better parser; a smaller one decides against it, whatever the words); a long form (essay, story,
    report...) with a word asking for length (long, comprehensive, 长篇...); a book-length form
    (novel, thesis, 小说, 论文...); or a report asked for in detail."""
    short = _SHORT_SIZE.search(instruction)
    if short:  # before the stated length: "summarise this 10,000-word report in a paragraph"
        return False, f"asks for a short answer ({short.group(0)})"
    if _QUESTION.search(instruction) and not _ASKS_TO_WRITE.search(instruction):
        return False, "a question, not a request to write"
    stated = required_length(instruction, "better")
    if stated is not None:
        return stated >= min_required_words, f"states {stated} words"
    form, ask = _LONG_FORMS.search(instruction), _LONG_ASKS.search(instruction)
    if form and ask:
        return True, f"asks for a {ask.group(0)} {form.group(0)}"
    book = _BOOK_LENGTH.search(instruction)
    if book:
        return True, f"asks for a {book.group(0)}"
    report, depth = _DEPTH_FORMS.search(instruction), _DEPTH_ASKS.search(instruction)
    if report and depth:
        return True, f"asks for a {depth.group(0)} {report.group(0)}"
    return False, "no length stated and no long form asked for"


def pool_prompt(instruction: str, min_required_words: int) -> list[dict]:
    """Spec 3.1's classification call (ours, paraphrased): does the request need an answer of
    thousands of words? One word back."""
    return [{"role": "user", "content": (
        f"Does the following request need an answer of at least {min_required_words} words to be fulfilled well? "
        "Answer with one word, yes or no.\n\n"
        f"Request:\n{instruction}")}]


def parse_yes_no(reply: str) -> bool | None:
    """True for a reply that opens with yes (是, 需要), False for no (否, 不), None otherwise."""
    head = reply.strip().lstrip("*_\"'`“「").lower()
    if re.match(r"(?:yes\b|是|需要)", head):
        return True
    if re.match(r"(?:no\b|否|不(?!确定|清楚|知道|一定|好说))", head):
        return False
    return None


# -- AgentWrite (spec 3.2-3.5) ------------------------------------------------------------------------

MAX_STEPS = 50  # [reference: over-planned samples crash the writer]
_TARGET = re.compile(r"(\d[\d,]*)\s*(?:words?|字|词)", re.I)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)、]|paragraph\s+\d+\s*[:.-])\s*", re.I)


@dataclass
class Plan:
    steps: list[str]  # one paragraph per step, in order
    word_targets: list[int | None]
    problems: list[str] = field(default_factory=list)  # why the plan cannot be used; empty: usable

    @property
    def ok(self) -> bool:
        return not self.problems


_STEP = re.compile(r"^\W*(?:(?:paragraph|section|step|part|段落|段|步骤|部分)\s*\d+|第\s*\d+|\d{1,2}\s*[.)、:：-])",
                   re.I)


_INTRO = re.compile(r"(?:sure|certainly|okay|ok|of course|here is|here's|here are|below is|below are|the following|"
                    r"title\s*[:：]|以下|好的|当然|下面|标题)", re.I)


def is_preamble(line: str) -> bool:
    """A line that introduces the plan and names no step and no word target: one that ends in a
    colon ("Here is the plan:"), a Markdown heading or bold line ("### Plan", "**Writing Plan**"), or
    one that opens as an introduction does ("Sure! Here is the breakdown ...", "以下是...", "Title: ...").
    A first step without a word count ("Paragraph 1 - Main Point: ...") is a step, not a preamble."""
    if _TARGET.search(line) or _STEP.match(line):
        return False
    bare = line.strip().strip("*_#` ")
    return bare.endswith((":", "：")) or line.lstrip().startswith(("#", "**")) or bool(_INTRO.match(bare))


def parse_plan(raw: str, max_steps: int = MAX_STEPS, require_targets: bool = True) -> Plan:
    """Every non-empty line is a step (the reference). A preamble (:func:`is_preamble`) is dropped;
    with ``require_targets`` any other line without a word target makes the plan unusable (it is
    never silently shortened); more than ``max_steps`` steps too."""
    lines = [ln.strip() for ln in re.sub(r"\n\s*\n", "\n", raw.strip()).split("\n") if ln.strip()]
    problems = []
    if lines and is_preamble(lines[0]):
        lines = lines[1:]  # "Here is the plan:"
    targets = []
    for ln in lines:
        m = _TARGET.search(ln)
        targets.append(int(m.group(1).replace(",", "")) if m else None)
    if not lines:
        problems.append("no steps")
    if len(lines) > max_steps:
        problems.append(f"{len(lines)} steps (more than {max_steps})")
    missing = [k + 1 for k, t in enumerate(targets) if t is None]
    if require_targets and missing:
        problems.append(f"steps without a word target: {missing[:10]}")
    return Plan(lines, targets, problems)


def plan_prompt(instruction: str) -> list[dict]:
    """Spec 3.2 (paraphrased): split the writing request into paragraph subtasks, one per line,
    each with its main point and a word count, 200 to 1,000 words each, nothing else."""
    return [{"role": "user", "content": (
        "I need you to help me break down the following long-form writing instruction into multiple subtasks. "
        "Each subtask will guide the writing of one paragraph in the essay, and should include the main points "
        "and word count requirements for that paragraph.\n\n"
        f"The writing instruction is as follows:\n\n{instruction}\n\n"
        "Please break it down in the following format, with each subtask taking up one line:\n\n"
        "Paragraph 1 - Main Point: [Describe the main point of the paragraph, in detail] - Word Count: "
        "[Word count requirement, e.g., 400 words]\n"
        "Paragraph 2 - Main Point: [Describe the main point of the paragraph, in detail] - Word Count: "
        "[word count requirement, e.g. 1000 words].\n\n...\n\n"
        "Make sure that each subtask is clear and specific, and that all subtasks cover the entire content of "
        "the writing instruction. Do not split the subtasks too finely; each subtask's paragraph should be no "
        "less than 200 words and no more than 1000 words. Do not output any other content.")}]


def write_prompt(instruction: str, plan: list[str], written: list[str], step: int) -> list[dict]:
    """Spec 3.4: the role, the instruction, the whole plan, the text written so far (the previous
    sections joined by a blank line), and the order to write step ``step`` (0-based) only."""
    so_far = "\n\n".join(written).strip()
    return [{"role": "user", "content": (
        "You are an excellent writing assistant. I will give you an original writing instruction and my planned "
        "writing steps. I will also provide you with the text I have already written. Please help me continue "
        "writing the next paragraph based on the writing instruction, writing steps, and the already written "
        "text.\n\n"
        f"Writing instruction:\n{instruction}\n\n"
        "Writing steps:\n" + "\n".join(plan) + "\n\n"
        f"Already written text:\n{so_far}\n\n"
        f"Please integrate the original writing instruction, writing steps, and the already written text, and "
        f"now continue writing {plan[step]}. If needed, you can add a small subtitle at the beginning. Remember "
        "to only output the paragraph you write, without repeating the already written text. As this is an "
        "ongoing writing task, there is no need to add a concluding summary at the end.")}]


# A leftover label: "Paragraph 3:", "## Section 2 -", "第2段：", "段落3：": a label word with its number and
# a separator, so that "Sectional rivalries", "Section 230 of the act" and "段落结构" keep their words.
_LABEL = re.compile(r"^\s*(?:#+\s*)?[*_]*\s*(?:(?:paragraph|section|part|段落)\s*(?:\d+|[一二三四五六七八九十]+)|"
                    r"第\s*(?:\d+|[一二三四五六七八九十]+)\s*(?:段|部分))\s*[*_]*\s*(?:[:：\-–—]|\.(?!\d)|\n)[*_]*\s*(?=\S)",
                    re.I)


def assemble(sections: list[str], strip_labels: bool = True) -> str:
    """The response: the sections in plan order joined by a blank line (as the writer's own "text
    so far"), with leftover "Paragraph k:" labels removed from each section's start."""
    parts = [(_LABEL.sub("", s, count=1) if strip_labels else s).strip() for s in sections]
    return "\n\n".join(parts)


# -- LongBench-Write quality judge (spec 3.7) -------------------------------------------------------

JUDGE_DIMENSIONS = ("Relevance", "Accuracy", "Coherence", "Clarity", "Breadth and Depth", "Reading Experience")


def judge_prompt(instruction: str, response: str) -> list[dict]:
    """The judge sees the request and the response and rates six dimensions 1-5, ignoring length."""
    dims = ", ".join(f'"{d}"' for d in JUDGE_DIMENSIONS)
    return [{"role": "user", "content": (
        "You are an expert in evaluating text quality. Please evaluate the quality of an AI assistant's response "
        "to a user's writing request. Be as strict as possible.\n\n"
        "Evaluate the response on six dimensions: Relevance (does it address the request), Accuracy (is the "
        "content correct, free of factual errors), Coherence (is it well organised and logically connected), "
        "Clarity (is the language clear and easy to follow), Breadth and Depth (does it cover the subject "
        "broadly and in depth), Reading Experience (is it pleasant and engaging to read). Rate each dimension "
        "with an integer from 1 to 5. Do not let the length of the response affect your ratings.\n\n"
        f"[Writing request]\n{instruction}\n\n[Response]\n{response}\n\n"
        "Answer with a JSON object only: a short \"Analysis\" string, then the six ratings under the keys "
        f"{dims}.")}]


def parse_judgement(text: str) -> dict[str, int] | None:
    """The six ratings of a judge's reply (a fenced block is unwrapped), or None when the reply is
    not JSON or any dimension is missing or outside 1-5 (the caller asks again)."""
    import json

    m = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    body = m.group(1) if m else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(body[start:end + 1])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    out = {}
    for d in JUDGE_DIMENSIONS:
        v = data.get(d)
        if isinstance(v, bool) or not isinstance(v, int | float) or not 1 <= v <= 5 or int(v) != v:
            return None
        out[d] = int(v)
    return out


def quality_score(judgements: list[dict[str, int]]) -> tuple[float, dict[str, float]]:
    """(S_q, each dimension's score): a dimension's mean rating m gives (m - 1) x 25; a dimension
    no judgement rated counts as 3 (spec 3.7)."""
    per = {}
    for d in JUDGE_DIMENSIONS:
        ratings = [j[d] for j in judgements if d in j]
        per[d] = ((sum(ratings) / len(ratings)) if ratings else 3.0) * 25 - 25
    return sum(per.values()) / len(per), per


def overall_score(s_l: float, s_q: float) -> float:
    """S = (S_l + S_q) / 2."""
    return (s_l + s_q) / 2
