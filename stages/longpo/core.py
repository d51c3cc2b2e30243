"""LongPO's pure parts (spec ../shared/specs/longpo.md): paragraphs and length-banded chunks, the
question request and its parser, lead-ins, the long context and its left truncation, and the
pair filters. No model here: :mod:`stages.longpo.stages` makes the calls.

Our wording (the reference's prompt, 20 lead-ins and ~37 refusal phrases were paraphrased or
written anew, not copied) is versioned by ``PROMPT_VERSION`` and recorded in each row's metadata."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PROMPT_VERSION = "longforge-longpo-1"
CHUNK_SEPARATOR = "\n\n\n"  # between the chunks of a long context [code]
CONTEXT_SEPARATOR = "\n\n"  # between a context and its question [code]

# Back-references that open every question, so that the question reads after its context [ours: 20, as
# the reference has]; grouping keeps only turns whose question starts with one of them (spec 3.5).
LEAD_INS = (
    "Based on the preceding text,", "According to the text above,", "Drawing on the passage above,",
    "In light of the text you just read,", "With reference to the preceding passage,",
    "Considering the document above,", "From the text provided above,",
    "Using the information in the preceding text,", "Referring back to the passage above,",
    "Given the text above,", "On the basis of the preceding document,", "Taking the above text into account,",
    "In the context of the passage above,", "As described in the preceding text,", "Thinking about the text above,",
    "Judging from the passage above,", "With the preceding text in mind,", "Relying on the document above,",
    "After reading the text above,", "Looking back at the preceding passage,",
)

# Phrases that mark an answer as a refusal or a censored reply (case-insensitive substrings; English
# only, as the reference's list, spec 5) [ours].
REFUSAL_PHRASES = (
    "i'm sorry", "i am sorry", "i apologize", "my apologies", "as an ai", "as a language model",
    "as an assistant", "i cannot", "i can't", "i can not", "i am unable", "i'm unable", "i am not able",
    "i'm not able", "i won't be able", "i will not", "i must decline", "i have to decline",
    "it is not appropriate", "it's not appropriate", "not appropriate for me", "i'm not comfortable",
    "i am not comfortable", "against my programming", "against my guidelines", "my guidelines",
    "openai", "content policy", "ethical guidelines", "i do not have access", "i don't have access",
    "i do not have the ability", "i don't have the ability", "i'm just an ai", "i am just an ai",
    "cannot fulfill", "can't fulfill",
)

_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")
_LATEX_HEADING = re.compile(r"(?m)^(?=[ \t]*\\(?:sub)*section\*?\s*[\[{])")
_NUMBERED = re.compile(r"^\s*[#>*_\-\s]*\(?(?:Q(?:uestion)?\s*)?(\d{1,2})\s*[:.!?\-]\s*(.+?)\s*$", re.IGNORECASE)
_DECORATION = re.compile(r"^[\s*_\"'`]+|[\s*_\"'`]+$")
_WORD = re.compile(r"\w+", re.UNICODE)


def paragraphs(text: str, domain: str) -> list[str]:
    """Paragraphs of a document (spec 3.2): blank-line runs for books and code; LaTeX section and
    subsection headings for arXiv (each heading opens a paragraph). Empty ones are left out."""
    if domain == "arxiv":
        parts = _LATEX_HEADING.split(text)
    elif domain in ("book", "code"):
        parts = _BLANK_LINES.split(text)
    else:
        raise ValueError(f"domain '{domain}': one of book, arxiv, code")
    return [p.strip("\n") for p in parts if p.strip()]


@dataclass(frozen=True)
class Chunk:
    index: int  # among the document's accepted chunks, in document order
    text: str
    tokens: int


@dataclass(frozen=True)
class Chunking:
    chunks: list[Chunk]
    document_tokens: int
    lost_tokens: int  # in paragraph groups outside the band (spec 3.2: text between chunks can be lost)
    lost_groups: int


def split_long(paras: Sequence[str], count: Callable[[str], int], max_tokens: int,
               joiner: str = "\n\n") -> tuple[list[str], list[str]]:
    """(pieces, the separator before each): a paragraph over ``max_tokens`` is cut at its line
    breaks, so that text whose blank lines were lost (hard-wrapped essays) still forms chunks
    [ours; the reference loses such a paragraph]; joining the pieces with their separators gives
    the paragraphs back."""
    pieces, seps = [], []
    for para in paras:
        parts = para.split("\n") if "\n" in para and count(para) > max_tokens else [para]
        for k, part in enumerate(parts):
            pieces.append(part)
            seps.append("\n" if k else joiner)
    return pieces, seps


def chunk_document(paras: Sequence[str], count: Callable[[str], int], min_tokens: int, max_tokens: int,
                   joiner: str = "\n\n", seps: Sequence[str] | None = None) -> Chunking:
    """Greedy grouping of consecutive paragraphs (spec 3.2): a group that would pass ``max_tokens``
    is closed before the paragraph that would pass it; closed groups outside [min, max] are lost.
    ``seps``: the separator before each paragraph inside a group (default ``joiner``)."""
    if not 0 < min_tokens <= max_tokens:
        raise ValueError(f"chunk band [{min_tokens}, {max_tokens}] is empty")
    seps = list(seps) if seps is not None else [joiner] * len(paras)
    counts = [count(p) for p in paras]
    chunks: list[Chunk] = []
    lost = lost_groups = 0
    group: list[str] = []
    size = 0

    def close() -> None:
        nonlocal lost, lost_groups
        if not group:
            return
        if min_tokens <= size <= max_tokens:
            chunks.append(Chunk(len(chunks), "".join(group)[len(first_sep):], size))
        else:
            lost, lost_groups = lost + size, lost_groups + 1

    first_sep = ""
    for para, n, sep in zip(paras, counts, seps, strict=True):
        if group and size + n > max_tokens:
            close()
            group, size = [], 0
        if not group:
            first_sep = sep
        group.append(sep + para)
        size += n
    close()
    return Chunking(chunks, sum(counts), lost, lost_groups)


def long_context(chunks: Sequence[Chunk]) -> str:
    """A document's long context: its chunks joined in document order (spec 3.5)."""
    return CHUNK_SEPARATOR.join(c.text for c in chunks)


def fit_from_left(chunks: Sequence[Chunk], budget: int, count: Callable[[str], int]) -> int:
    """How many leading chunks to leave out so that the long context fits ``budget`` tokens: the
    context is cut from the left, whole chunks at a time, so the question after it is never cut
    and the context never starts mid-paragraph. ``len(chunks)`` when not even the last one fits."""
    start = 0
    estimate = sum(c.tokens for c in chunks) + 2 * max(len(chunks) - 1, 0)
    while start < len(chunks) and estimate > budget:  # cheap estimate first, then exact counts
        estimate -= chunks[start].tokens + 2
        start += 1
    while start < len(chunks) and count(long_context(chunks[start:])) > budget:
        start += 1
    return start


def question_prompt(chunk: str, n_questions: int = 4) -> list[dict]:
    """The request for questions about a chunk (spec 3.3, our wording)."""
    numbers = ", ".join(f'"{k}:"' for k in range(1, n_questions + 1))
    request = (
        f"Write exactly {n_questions} questions about the text above that test comprehension and analysis of "
        "the text as a whole. Each question should connect different parts of the text and call for "
        "synthesising information from them; the questions must differ from one another; some may ask the "
        "reader to evaluate the ideas critically or apply them. Make every question clear and self-contained. "
        f"Number them {numbers}, one per line, and write nothing else.")
    return [{"role": "user", "content": f"{chunk}{CONTEXT_SEPARATOR}{request}"}]


_ENDS = ("?", ".", "!", "？", "。", "！")  # what closes a question


def parse_questions(text: str) -> list[str]:
    """The numbered items of a reply (a number, then ':', '.', '!', '?' or '-'; spec 3.3), stripped
    of decoration (bold, quotes, list marks), in order. A question wrapped over lines keeps its end:
    a line right after an item that has not ended (no closing ?, ., !) continues it when it goes on
    in lower case, as a wrapped sentence does ("...of the company" / "with its later failures?");
    anything else (a blank line, a new number, "I hope these help!", "**Answer:**") ends it."""
    out: list[str] = []
    open_item = False
    for line in text.splitlines():
        m = _NUMBERED.match(line)
        if m:
            q = _DECORATION.sub("", m.group(2))
            if q:
                out.append(q)
            open_item = bool(q) and not q.endswith(_ENDS)
        elif open_item and line.strip()[:1].islower():
            out[-1] = _DECORATION.sub("", f"{out[-1]} {line.strip()}")
            open_item = not out[-1].endswith(_ENDS)
        else:
            open_item = False
    return out


def with_lead_in(lead_in: str, question: str) -> str:
    """``lead_in`` then the question, its first letter lowered unless it starts a name or acronym."""
    q = question.strip()
    if len(q) > 1 and q[0].isupper() and q[1].islower() and not q.startswith("I "):
        q = q[0].lower() + q[1:]
    return f"{lead_in} {q}"


def answer_prompt(context: str, question: str) -> list[dict]:
    """One chat turn: a context (a chunk, or the long context), then the question (spec 3.4, 3.6)."""
    return [{"role": "user", "content": f"{context}{CONTEXT_SEPARATOR}{question}"}]


def repeated_word_ratio(text: str) -> float:
    """The share of word tokens whose type occurs more than once in the text (spec 3.7)."""
    words = [w.lower() for w in _WORD.findall(text)]
    if not words:
        return 0.0
    counts: dict[str, int] = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    return sum(1 for w in words if counts[w] > 1) / len(words)


REFUSAL_MATCHES = ("declining", "anywhere")


def refusal_phrase(text: str, phrases: Sequence[str] = REFUSAL_PHRASES, match: str = "declining",
                   patterns: Sequence[str] | None = None) -> str | None:
    """Why an answer is a refusal, or None. ``declining`` (default): the model declining the request
    where its answer starts, outside quotes (the shared patterns of :mod:`stages.blocks.generation`), so an
    answer that quotes a character ("I cannot go back") or discusses a company (OpenAI) is kept and
    the phrase list is not read. ``anywhere``: the reference's test, a phrase of the list anywhere
    in the answer (spec 3.6)."""
    if match not in REFUSAL_MATCHES:
        raise ValueError(f"refusal match {match!r}: one of {', '.join(REFUSAL_MATCHES)}")
    if match == "anywhere":
        low = text.lower().replace("\u2019", "'")
        return next((ph for ph in phrases if ph.lower() in low), None)
    from stages.blocks.generation import REFUSAL_PATTERNS, refusal

    return refusal(text, tuple(patterns) if patterns is not None else REFUSAL_PATTERNS)


def answer_problem(text: str, max_repeat: float, min_long_words: int = 2,
                   phrases: Sequence[str] = REFUSAL_PHRASES, match: str = "declining",
                   patterns: Sequence[str] | None = None) -> tuple[str, str] | None:
    """(category, detail) of why an answer fails the pair filters (spec 3.7), or None: empty;
    repeated-word ratio above ``max_repeat``; fewer than ``min_long_words`` words of 3 or more
    characters; a refusal phrase (see :func:`refusal_phrase` for ``match``)."""
    if not text.strip():
        return "empty", ""
    ratio = repeated_word_ratio(text)
    if ratio > max_repeat:
        return "repeated words", f"{ratio:.2f} > {max_repeat:g}"
    if sum(1 for w in _WORD.findall(text) if len(w) >= 3) < min_long_words:
        return "too few words", f"fewer than {min_long_words} words of 3+ characters"
    hit = refusal_phrase(text, phrases, match, patterns)
    return ("refusal phrase", repr(hit)) if hit else None
