"""Ada-LEval's pure parts (spec ada-leval.md 4, 6, 8): TSort blocks and answers, and both scorers,
the reference's (quirks included) and the strict one, on known-answer cases."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from stages.adaleval import core


def words(text: str) -> int:  # a stand-in token counter: one token per word
    return len(text.split())


def test_headings_are_left_out_and_short_paragraphs_join_the_next():
    text = ("CHAPTER IV\n\nThe Rabbit Sends in a Little Bill\n\n" + "It was the White Rabbit, trotting slowly back "
            "again, and looking anxiously about as it went, as if it had lost something. " * 2 + "\n\nIX.\n\n"
            "Alice said nothing.\n\nACT II\nScene 3\n" + "She had never been so much contradicted in her life "
            "before, and she felt that she was losing her temper. " * 2)
    paras = core.clean_paragraphs(text, words, min_tokens=20)
    assert len(paras) == 2 and all(not core.is_heading(line) for p in paras for line in p.split("\n"))
    assert paras[0].startswith("The Rabbit Sends in a Little Bill\nIt was the White Rabbit")
    assert paras[1].startswith("Alice said nothing.\nShe had never")
    assert core.is_heading("Chapter 12. The Trial") and core.is_heading("ACT II") and core.is_heading("XIV.")
    assert not core.is_heading("part of design is redesign. Programming languages, especially,")


def test_the_tsort_answer_restores_the_original_order(real_docs):
    essay = max((d for d in real_docs if d["source"] == "paul_graham"), key=lambda d: len(d["text"]))
    paras = [ln for ln in essay["text"].split("\n") if ln.strip()]  # hard-wrapped lines stand in for paragraphs
    counts = [words(p) for p in paras]
    blocks = core.tsort_blocks(counts, start=10, block_tokens=60)
    assert blocks is not None and len(blocks) == 6
    flat = [i for b in blocks for i in b]
    assert flat == list(range(10, 10 + len(flat)))  # consecutive: before, 4 segments, after
    assert all(sum(counts[i] for i in b) >= 60 for b in blocks)
    assert all(sum(counts[i] for i in b[:-1]) < 60 for b in blocks)  # over by at most one paragraph
    for seed in range(24):
        shown = list(range(4))
        random.Random(seed).shuffle(shown)
        answer = core.tsort_answer(shown)
        assert sorted(answer) == [1, 2, 3, 4]
        restored = [shown[label - 1] for label in answer]  # read the labelled segments in the answer's order
        assert restored == [0, 1, 2, 3]
    assert core.tsort_blocks(counts, start=len(counts) - 3, block_tokens=60) is None  # the text runs out
    assert core.tsort_blocks([10, 500, 10], 0, 60) is None  # one paragraph over twice the block


def test_tsort_reference_accepts_a_too_short_answer_and_strict_does_not():
    answer = [2, 4, 1, 3]
    for reply, ref_ok, strict_ok in [
        ("Answer: [2, 4, 1, 3]", True, True),
        ("Answer: [2]", True, False),  # the reference compares only the positions given
        ("Answer: [2, 4]", True, False),
        ("The order is 2, then 4, then 1, then 3.", True, True),  # the one permutation in order
        ("Answer: [2, 4, 3, 1]", False, False),
        ("Answer: [2, 4, 1, 3, 5]", True, False),  # not a permutation of 1..4
        ("I cannot tell.", False, False),
    ]:
        assert core.tsort_correct_reference(answer, core.parse_tsort_reference(reply)) is ref_ok, reply
        assert core.tsort_correct_strict(answer, core.parse_tsort_strict(reply)) is strict_ok, reply
    assert core.tsort_correct_reference(answer, core.parse_tsort_reference("Answer: 2413")) is False  # a number


def test_best_answer_issue_5_the_reference_takes_the_highest_label_strict_the_first():
    # Ada-LEval issue #5: a reply naming several labels scores its highest-numbered one
    reply = "Answer: A1. A3 and A10 are less helpful."
    assert core.parse_best_answer_reference(reply, 10) == "A10"
    assert core.parse_best_answer_strict(reply, 10) == "A1"
    # "A1" inside "A10": the reference finds both; strict reads A10 only
    assert core.parse_best_answer_reference("Answer: A10", 12) == "A10"
    assert core.parse_best_answer_strict("Answer: A10", 12) == "A10"
    assert core.parse_best_answer_strict("Answer: A10", 9) is None  # no such candidate
    # bare numbers when no label is given
    assert core.parse_best_answer_reference("The third one (3) is best, not 2.", 4) == "A3"
    assert core.parse_best_answer_strict("Answer: 2 is best; 3 is close", 4) == "A2"
    assert core.parse_best_answer_reference("none of them", 4) == "???"
    assert core.parse_best_answer_strict("none of them", 4) is None


# Posts.xml in the StackExchange dump format (a hand-written fixture: the dumps are not offline)
POSTS = Path(__file__).resolve().parents[2] / "fixtures" / "stackexchange" / "Posts.xml"


def test_posts_are_read_with_html_stripped_code_kept_and_both_tag_formats():
    from pipelines.commands.eval_command import read_posts_rows

    rows = {r["post_id"]: r for r in read_posts_rows(str(POSTS))}
    questions = {k for k, r in rows.items() if r["post_type"] == "question"}
    assert questions == {"1", "5", "8", "11", "13"} and rows["8"]["tags"] == ["python", "file-io"]
    assert rows["1"]["tags"] == ["python", "list"] and rows["1"]["accepted_answer_id"] == "3"
    assert [k for k, r in rows.items() if r["parent_id"] == "1"] == ["2", "3", "4"]
    assert "ys = xs[::-1]" in rows["2"]["text"] and "<" not in rows["2"]["text"]
    assert "ArrayList<Integer>" in rows["12"]["text"]


# -- issue 33, points 4, 13, 14, 15 ---------------------------------------------------------------


def test_strict_best_answer_reads_the_plainest_answer_with_a_full_stop():
    assert core.parse_best_answer_strict("The most helpful answer is 3.", 4) == "A3"
    assert core.parse_best_answer_reference("The most helpful answer is 3.", 4) == "A3"
    assert core.parse_best_answer_strict("Answer: 2.", 4) == "A2"
    # a decimal is still no answer: neither 2 nor 5 is read out of 2.5
    assert core.parse_best_answer_strict("About 2.5 of them are fine", 4) is None


def test_a_short_paragraph_joins_the_next_so_the_blocks_restore_the_text():
    """Spec 4.1 as changed on 2026-12-03: nothing but headings leaves the text."""
    long_a = "It was the White Rabbit, trotting slowly back again, and looking anxiously about as it went. " * 2
    long_b = "She had never been so much contradicted in her life before, and she felt that she was losing it. " * 2
    text = f"CHAPTER IV\n\n{long_a}\n\n\"Well?\" said Anne.\n\n{long_b}\n\nThe end."
    paras = core.clean_paragraphs(text, words, min_tokens=20)
    assert all(words(p) >= 20 for p in paras)
    # read in order, the paragraphs give every word of the text but the heading's
    assert " ".join(" ".join(paras).split()) == " ".join(text.replace("CHAPTER IV", "").split())
    assert any(p.startswith('"Well?" said Anne.') for p in paras)


def test_only_a_valid_roman_numeral_alone_between_blank_lines_is_a_heading():
    changelog = ("Fixed a bug in the wrapper around library functions that\ndid.\nIf the exec call failed, the "
                 "child would exit with the wrong status code and the parent never noticed it at all.")
    assert " ".join(core.clean_paragraphs(changelog, words, min_tokens=5)).split() == changelog.split()
    manual = "Options are read one a line:\nvv\nv\nthe first turns on more output and the second some output."
    assert " ".join(core.clean_paragraphs(manual, words, min_tokens=5)).split() == manual.split()
    book = "The rain had stopped by the time they reached the house on the hill.\n\nXIV.\n\nThe next day came."
    assert "XIV." not in " ".join(core.clean_paragraphs(book, words, min_tokens=3))
    assert not core.is_heading("did.") and not core.is_heading("vv") and core.is_heading("XIV.")


# -- review of issue 33: headings of other forms, at a paragraph's head; lines inside are text ------


BODY = "The rain had stopped by the time they reached the old house on the hill above the river."


@pytest.mark.parametrize("heading", [
    "第二章", "二", "第2章 风雪", "Chapter Eleven", "CHAPTER TWENTY-ONE", "Chapter the Second", "Chapter I—Loomings",
    "PART 2 — WINTER", "Letter 4", "Stave Three", "Section 3", "BOOK THE SECOND", "CHAPTER II.", "XIV."])
def test_a_heading_of_its_own_or_at_a_paragraphs_head_is_left_out(heading):
    for text in (f"{BODY}\n\n{heading}\n\n{BODY}", f"{BODY}\n\n{heading}\n{BODY}",
                 f"{BODY}\r\n\r\n{heading}\r\n\r\n{BODY}"):
        paras = core.clean_paragraphs(text, words, min_tokens=5)
        assert heading not in "\n".join(paras) and " ".join(paras).split() == f"{BODY} {BODY}".split(), text


@pytest.mark.parametrize("line", ["Part two of the plan was simple.", "Scene 3 takes place at night.",
                                  "Chapter 5 explains the API.", "v", "did."])
def test_a_heading_like_line_inside_a_paragraph_stays(line):
    text = f"{BODY}\n{line}\n{BODY}"
    assert " ".join(core.clean_paragraphs(text, words, min_tokens=5)).split() == text.split()
