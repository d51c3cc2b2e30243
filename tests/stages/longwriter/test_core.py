"""LongWriter and minimum-tuning pure parts against spec longwriter.md section 6."""

from __future__ import annotations

import pytest

from stages.longwriter import core


def test_word_counter_example():
    assert core.count_words("Hello, 世界 2024!") == 3
    assert core.count_words("don't stop") == 3  # letter runs at word boundaries: don, t, stop
    assert core.count_words("") == 0


@pytest.mark.parametrize("x, y, s", [(1000, 1000, 100.0), (1000, 2000, 66.6667), (1000, 500, 50.0),
                                     (1000, 4000, 0.0), (1000, 1600, 80.0), (1000, 300, 0.0)])
def test_length_score_known_values(x, y, s):
    assert core.length_score(x, y) == pytest.approx(s, abs=1e-3)


def test_length_score_falls_with_distance_on_each_side():
    over = [core.length_score(1000, y) for y in (1000, 1200, 1600, 2500, 3900)]
    under = [core.length_score(1000, y) for y in (1000, 900, 700, 500, 340)]
    assert over == sorted(over, reverse=True) and under == sorted(under, reverse=True)
    # the minimum-tuning band: S_l >= 80 iff length / 1.4 <= y <= 1.6 length
    for y in range(600, 1800, 7):
        assert (core.length_score(1000, y) >= 80 - 1e-9) == (1000 / 1.4 - 1e-9 <= y <= 1600 + 1e-9)


# spec 6: the reference's values (quirks included), and what the better parser reads instead
CASES = [
    ("写一篇5000字的文章", 5000, 5000),
    ("Write a 3000 words essay", 3000, 3000),
    ("写一篇三千字的小说", 3000, 3000),
    ("写一篇一万字的文章", 10000, 10000),
    ("写3000-5000字", 5000, 5000),
    ("Write a 10,000 words story", 0, 10000),
    ("Write a 3000-word essay", None, 3000),
    ("写5000字和三千字", None, None),
    ("写一篇数千字的文章", None, None),
    ("请写一篇三千五百字的报告", 500, 3500),  # the reference reads only the digit before 百
    ("写一篇1.5万字的小说", None, 15000),
    ("Write about 2,000 to 3,000 words on rivers", 0, 3000),  # the reference reads "000 words"
    ("写一篇5000字的文章，不少于5000字", 5000, 5000),
    ("Write a story about a cat.", None, None),
]


@pytest.mark.parametrize("text, reference, better", CASES)
def test_required_length_in_both_modes(text, reference, better):
    assert core.required_length(text, "reference") == reference
    assert core.required_length(text, "better") == better


def test_plan_parsing_validation():
    raw = ("Here is the plan:\n\nParagraph 1 - Main Point: the river's source - Word Count: 400 words\n\n"
           "Paragraph 2 - Main Point: the delta - Word Count: 1,000 words\n")
    plan = core.parse_plan(raw)
    assert plan.ok and len(plan.steps) == 2 and plan.word_targets == [400, 1000]
    assert plan.steps[0].startswith("Paragraph 1")
    too_many = core.parse_plan("\n".join(f"Paragraph {k} - Main Point: p{k} - Word Count: 200 words"
                                         for k in range(1, 52)))
    assert not too_many.ok and "51 steps" in too_many.problems[0]  # a 51-line plan gives no row
    assert core.parse_plan("\n".join(f"- point {k} (300 words)" for k in range(50))).ok
    vague = core.parse_plan("Paragraph 1 - Main Point: intro - Word Count: 300 words\nThen some more text")
    assert not vague.ok and "[2]" in vague.problems[0]
    assert not core.parse_plan("   \n\n").ok


def test_write_prompt_holds_exactly_the_text_so_far():
    plan = ["Paragraph 1 - a - 300 words", "Paragraph 2 - b - 300 words", "Paragraph 3 - c - 300 words"]
    sections = ["First section.", "Second section."]
    prompt = core.write_prompt("Write about rivers.", plan, sections, 2)[0]["content"]
    assert "Already written text:\nFirst section.\n\nSecond section.\n\n" in prompt
    assert prompt.count("Paragraph 3 - c - 300 words") == 2  # in the plan, and as the step to write now
    first = core.write_prompt("Write about rivers.", plan, [], 0)[0]["content"]
    assert "Already written text:\n\n" in first and "First section." not in first


def test_assembly_joins_in_order_and_strips_labels():
    assert core.assemble(["Paragraph 1: The source.", "## Paragraph 2 - The delta.", " Plain. "]) == \
        "The source.\n\nThe delta.\n\nPlain."
    assert core.assemble(["Paragraph 1: kept"], strip_labels=False) == "Paragraph 1: kept"


def test_judge_replies_are_parsed_strictly():
    good = ('Here you go:\n```json\n{"Analysis": "fine", "Relevance": 5, "Accuracy": 4, "Coherence": 4, '
            '"Clarity": 5, "Breadth and Depth": 3, "Reading Experience": 4}\n```')
    assert core.parse_judgement(good) == {"Relevance": 5, "Accuracy": 4, "Coherence": 4, "Clarity": 5,
                                          "Breadth and Depth": 3, "Reading Experience": 4}
    assert core.parse_judgement(good.replace('"Clarity": 5, ', "")) is None  # a missing dimension: ask again
    assert core.parse_judgement(good.replace('"Accuracy": 4', '"Accuracy": 7')) is None
    assert core.parse_judgement("I think it is good.") is None
    prompt = core.judge_prompt("Write about rivers.", "Rivers flow.")[0]["content"]
    assert all(d in prompt for d in core.JUDGE_DIMENSIONS) and "length" in prompt


def test_quality_and_overall_scores():
    s_q, per = core.quality_score([{d: 5 for d in core.JUDGE_DIMENSIONS}, {d: 3 for d in core.JUDGE_DIMENSIONS}])
    assert s_q == 75.0 and set(per.values()) == {75.0}
    s_q, per = core.quality_score([{"Relevance": 1}])
    assert per["Relevance"] == 0 and per["Clarity"] == 50  # unrated: 3
    assert core.overall_score(48.92, 85.87) == pytest.approx(67.4, abs=0.01)  # minimum tuning's Qwen2 row


# -- issue 33, points 6, 7, 17 ----------------------------------------------------------------------


def test_a_first_step_without_a_word_count_is_a_step_not_a_preamble():
    raw = ("Paragraph 1 - Main Point: introduce the history of the town\n"
           "Paragraph 2 - Main Point: the mills - Word Count: 500 words")
    plan = core.parse_plan(raw, require_targets=False)
    assert plan.ok and len(plan.steps) == 2 and plan.steps[0].startswith("Paragraph 1")
    assert plan.word_targets == [None, 500]
    # with targets required, the step is kept and the plan is unusable (never silently shortened)
    strict = core.parse_plan(raw)
    assert not strict.ok and "[1]" in strict.problems[0]
    # a line that introduces the plan (ends in a colon, names no step) is still a preamble
    for intro in ("Here is the plan:", "以下是写作计划：", "**Plan:**"):
        assert core.parse_plan(f"{intro}\nParagraph 1 - x - 300 words").steps == ["Paragraph 1 - x - 300 words"]
    assert len(core.parse_plan("Paragraph 1 - Main Point: the setting:\nParagraph 2 - y - 300 words",
                               require_targets=False).steps) == 2


@pytest.mark.parametrize("section, expected", [
    ("Sectional rivalries shaped the vote.", "Sectional rivalries shaped the vote."),
    ("Section 230 of the act protects platforms.", "Section 230 of the act protects platforms."),
    ("段落结构决定了文章的可读性。", "段落结构决定了文章的可读性。"),
    ("Paragraphs are the unit of thought.", "Paragraphs are the unit of thought."),
    ("Paragraph 3: The mills opened in 1820.", "The mills opened in 1820."),
    ("**Section 2 -** The river.", "The river."),
    ("第2段：河流的源头。", "河流的源头。"),
    ("段落3：三角洲。", "三角洲。"),
])
def test_a_label_is_a_label_only_with_its_number_and_separator(section, expected):
    assert core.assemble([section]) == expected


@pytest.mark.parametrize("text, expected", [
    ("写一篇文章，字数在三千到五千之间", 5000),
    ("写一篇文章，字数五千左右", 5000),
    ("Write an essay on rivers. Word count: 1500.", 1500),
    ("写一篇游记，字数：3000", 3000),
    ("Write a report. Word count: 1,200-1,500", 1500),
])
def test_better_mode_reads_a_length_stated_after_its_label(text, expected):
    assert core.required_length(text, "better") == expected


# -- review of issue 33 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("字数一定要多，写一篇长篇小说", None),  # no number after the label
    ("写一篇长篇小说，字数一般在五千以上", 5000),
    ("字数一定要够，写一篇五千字的文章", 5000),
    ("字数千万别太少", None),
    ("字数二〇〇〇字", 2000),
    ("字数3000～5000字", 5000),
    ("字数：3000—5000字", 5000),
    ("Word count: 2k", 2000),
    ("Word count: 1.5k words", 1500),
    ("word count: 3 paragraphs", None),
    ("Word count: 1500 to 2000 characters", None),
    ("字数" + "9" * 400, None),  # no overflow, no length
    ("Write a " + "9" * 50 + " word essay", None),
])
def test_better_mode_on_the_reviews_cases(text, expected):
    assert core.required_length(text, "better") == expected


@pytest.mark.parametrize("first", [
    "Sure! Here is the breakdown of the writing instruction into subtasks.", "好的，以下是分解后的写作子任务",
    "**Writing Plan**", "### Plan", "Title: The History of Oakville"])
def test_common_preambles_without_a_colon_are_preambles(first):
    plan = core.parse_plan(f"{first}\nParagraph 1 - Main Point: the mills - Word Count: 500 words")
    assert plan.ok and plan.steps == ["Paragraph 1 - Main Point: the mills - Word Count: 500 words"]


def test_a_section_number_with_a_decimal_point_is_not_a_label():
    assert core.assemble(["Section 1.2 of the standard defines the header."]) == \
        "Section 1.2 of the standard defines the header."
    assert core.assemble(["Section 3. The end."]) == "The end."
