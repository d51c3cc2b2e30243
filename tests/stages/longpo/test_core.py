"""LongPO's pure parts (spec longpo.md 3.2, 3.3, 3.7): paragraphs, the chunk band, the question
parser, left truncation and the pair filters."""

from __future__ import annotations

import pytest

from stages.longpo import core


def words(text: str) -> int:  # a stand-in token counter: one token per word
    return len(text.split())


def test_paragraphs_split_on_blank_lines_for_books_and_on_latex_headings_for_arxiv():
    book = "First para line one\nline two.\n\n\n  \nSecond para.\n\nThird."
    assert core.paragraphs(book, "book") == ["First para line one\nline two.", "Second para.", "Third."]
    paper = "Abstract text.\n\\section{Intro}\nIntro text.\n\n\\subsection*{Detail}\nMore.\n"
    parts = core.paragraphs(paper, "arxiv")
    assert parts[0] == "Abstract text." and parts[1].startswith("\\section{Intro}")
    assert parts[2].startswith("\\subsection*{Detail}") and "".join(parts).replace("\n", "") == \
        paper.replace("\n", "")
    with pytest.raises(ValueError, match="domain"):
        core.paragraphs("x", "poetry")


def test_chunks_lie_in_the_band_and_groups_outside_it_are_lost_not_stretched():
    paras = ["a " * 40, "b " * 40, "c " * 40, "d " * 100, "e " * 10, "f " * 30, "g " * 50]
    c = core.chunk_document([p.strip() for p in paras], words, min_tokens=60, max_tokens=90)
    assert all(60 <= ch.tokens <= 90 for ch in c.chunks)
    assert [ch.tokens for ch in c.chunks] == [80, 90]  # a+b; e+f+g  (c alone 40 < 60; d alone 100 > 90)
    assert c.lost_groups == 2 and c.lost_tokens == 140
    assert c.document_tokens == sum(c.tokens for c in c.chunks) + c.lost_tokens
    assert [ch.index for ch in c.chunks] == [0, 1]
    with pytest.raises(ValueError):
        core.chunk_document(paras, words, 10, 5)


def test_left_truncation_drops_whole_leading_chunks_until_the_context_fits():
    chunks = [core.Chunk(i, " ".join([f"w{i}"] * 50), 50) for i in range(5)]
    assert core.fit_from_left(chunks, 10_000, words) == 0
    start = core.fit_from_left(chunks, 160, words)
    assert start == 2 and words(core.long_context(chunks[start:])) <= 160
    assert words(core.long_context(chunks[start - 1:])) > 160  # the fewest chunks left out
    assert core.fit_from_left(chunks, 10, words) == 5


def test_question_parser_takes_numbered_items_with_the_spec_punctuation():
    reply = ("Here are the questions:\n1: How does the author link A and B?\n**2.** What changes in part two?\n"
             "3! Why is the ending different?\n4 - What would happen if C were false?\nThat is all.")
    assert core.parse_questions(reply) == ["How does the author link A and B?", "What changes in part two?",
                                           "Why is the ending different?", "What would happen if C were false?"]
    assert len(core.parse_questions("1: one?\n2: two?\n3: three?")) == 3
    assert "exactly 4 questions" in core.question_prompt("Some text.")[0]["content"]


def test_lead_ins_are_twenty_distinct_back_references():
    assert len(set(core.LEAD_INS)) == 20 and all(x.endswith(",") for x in core.LEAD_INS)
    q = core.with_lead_in(core.LEAD_INS[0], "What does the author argue?")
    assert q == "Based on the preceding text, what does the author argue?" and q.startswith(core.LEAD_INS)
    assert core.with_lead_in("Given the text above,", "NASA's role?").endswith("NASA's role?")


def test_filters_drop_repetition_refusals_and_empty_answers_and_pass_a_normal_answer():
    normal = ("The essay argues that startups grow by doing things that do not scale, and that founders "
              "should recruit their first users by hand before building any automation.")
    assert core.answer_problem(normal, 0.90) is None
    assert core.answer_problem("the " * 60, 0.90)[0] == "repeated words"
    assert core.answer_problem("the " * 60, 0.95)[0] == "repeated words"
    assert core.answer_problem("I'm sorry, but as an AI I cannot answer that question.", 0.90)[0] == \
        "refusal phrase"
    assert core.answer_problem("  \n", 0.90)[0] == "empty"
    assert core.answer_problem("Yes, a b.", 0.90)[0] == "too few words"
    # repeated-word ratio: share of word tokens whose type occurs more than once
    assert core.repeated_word_ratio("a b a c") == pytest.approx(0.5)
    assert core.repeated_word_ratio("") == 0.0


def test_a_paragraph_over_the_band_is_cut_at_its_line_breaks_and_nothing_is_lost():
    wrapped = "\n".join(" ".join([f"l{i}"] * 10) for i in range(30))  # 300 words, hard-wrapped, no blank line
    paras = ["intro " * 5, wrapped]
    pieces, seps = core.split_long([p.strip() for p in paras], words, max_tokens=100)
    assert len(pieces) == 31 and seps[:3] == ["\n\n", "\n\n", "\n"]
    assert "".join(s + p for s, p in zip(seps, pieces, strict=True))[2:] == "\n\n".join(p.strip() for p in paras)
    c = core.chunk_document(pieces, words, 50, 100, seps=seps)
    # 5 + 9 lines = 95, then 10 lines, 10 lines, and the last line alone (10 < 50: lost)
    assert [ch.tokens for ch in c.chunks] == [95, 100, 100] and c.lost_tokens == 10
    assert all(ch.text in "\n\n".join(p.strip() for p in paras) for ch in c.chunks)


def test_a_question_wrapped_over_two_lines_keeps_its_end():
    """Issue 33, point 9: the line after a numbered question that has not ended yet continues it."""
    reply = ("1. How does the text connect the early history of the company\n   with its later failures?\n"
             "2. What did the founders want?\nThis one is easy.\n\n"
             "3. Which year\nis named first?\n\nThese questions cover the text.")
    assert core.parse_questions(reply) == [
        "How does the text connect the early history of the company with its later failures?",
        "What did the founders want?", "Which year is named first?"]


def test_chatter_after_an_unfinished_question_is_not_joined_to_it():
    """Review of issue 33: only a line that goes on in lower case continues a question."""
    assert core.parse_questions("1. What was the main idea\nI hope these questions help!") == ["What was the main idea"]
    assert core.parse_questions("1. Why did the war start\n**Answer:** because") == ["Why did the war start"]
    assert core.parse_questions("1. Describe the plot\nQuestions:\n2. Who?") == ["Describe the plot", "Who?"]
