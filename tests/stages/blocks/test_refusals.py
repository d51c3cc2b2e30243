"""What counts as a refusal (issue 33, point 8): the model declining the request, recognised where
the reply starts and outside quotes. Real text that opens with an apology inside a story, a shop
sign or a job title is not one. Known-answer tables written here, apart from the patterns."""

from __future__ import annotations

import pytest

from stages.blocks.generation import REFUSAL_PATTERNS, refusal
from stages.longpo import core as longpo_core

REAL_TEXT = [
    '"I\'m sorry," she whispered, and the door closed behind her before anyone could answer.',
    "“I'm sorry,” he said. “I cannot help you any more than I already have.”",
    "Sorry, the shop is closed on Sundays: that was the sign that met every visitor to the village.",
    "As an AI ethics researcher, Dr. Lee spent a decade studying how models decline requests.",
    "The letter began: I cannot help but think of the summer we spent by the lake.",
    "I cannot overstate how much the harbour changed the town's economy in the 1850s.",
    "段落结构决定了文章的可读性，抱歉这种说法并不常见。",
]
REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "I am sorry. I cannot write this essay because it asks for harmful content.",
    "Sorry, I won't be able to do that.",
    "Apologies, but I am unable to comply with this request.",
    "I cannot assist with writing this.",
    "I can't help with that.",
    "**I'm sorry, but I cannot provide that.**",
    "As an AI language model, I cannot write an essay of this kind.",
    "As an AI, I don't have personal opinions, but I must decline to write this.",
    "Unfortunately, I cannot fulfil this request.",
    "抱歉，我无法完成这个请求。",
    "作为一个人工智能语言模型，我不能提供这类内容。",
]


@pytest.mark.parametrize("text", REAL_TEXT)
def test_real_text_is_not_a_refusal(text):
    assert refusal(text, REFUSAL_PATTERNS) is None


@pytest.mark.parametrize("text", REFUSALS)
def test_a_reply_that_declines_is_a_refusal(text):
    assert refusal(text, REFUSAL_PATTERNS) is not None


@pytest.mark.parametrize("text", [
    'The narrator admits: "I cannot go back to that house."',
    "According to the text above, OpenAI was founded as a research laboratory in 2015.",
    "Based on the preceding text, the firm acted as an assistant to the ministry during the war.",
    "OpenAI was founded in 2015 as a research laboratory.",
    "I cannot overstate how much the firm grew in those years.",
    "As an assistant professor, the narrator teaches history.",
    "It is not appropriate, the author argues, to judge the past by today's rules.",
    "Content policy at the firm changed in 2019.",
])
def test_longpo_keeps_answers_that_quote_a_character_or_discuss_a_company(text):
    assert longpo_core.answer_problem(text, 0.95) is None
    # the reference's reading (a phrase anywhere) is kept as an option and does drop them
    assert longpo_core.answer_problem(text, 0.95, match="anywhere")[0] == "refusal phrase"


@pytest.mark.parametrize("text", [
    "I'm sorry, but I cannot answer questions about this document.",
    "As an AI language model, I do not have access to the document.",
    "I cannot answer that based on the text.",
])
def test_longpo_drops_answers_that_open_by_declining(text):
    for match in ("declining", "anywhere"):
        assert longpo_core.answer_problem(text, 0.95, match=match)[0] == "refusal phrase"


# -- review of issue 33: contractions, curly apostrophes, other ways of declining; letters and fiction


@pytest.mark.parametrize("text", [
    "I'm unable to help with that request.",
    "I'm not able to provide that.",
    "I'm sorry, but I'm unable to write that.",
    "Apologies, but I'm unable to assist.",
    "I’m sorry, but I can’t help with that.",
    "I can’t assist with that.",
    "I'm sorry, but that request is against my guidelines.",
    "Sorry, but that's not something I can help with.",
    "I'm sorry, but I'm not comfortable writing that.",
    "I'm sorry, I don't think I should write that.",
    "I'm sorry, this request violates the content policy.",
    "I must decline this request.",
])
def test_more_ways_of_declining_are_refusals(text):
    assert refusal(text, REFUSAL_PATTERNS) is not None


@pytest.mark.parametrize("text", [
    "I am sorry that I cannot attend your wedding on Saturday.",
    "对不起，我不能回家过年了。",
    "抱歉，我无法参加明天的会议。",
    "I apologize for the delay; I can't thank you enough for your patience.",
    "Sorry, I can't believe how fast the year went.",
    "I can't help thinking about that summer.",
    "I cannot provide for my family, said the farmer, and walked away.",
    "I cannot do this anymore, she thought.",
])
def test_letters_and_narration_are_not_refusals(text):
    assert refusal(text, REFUSAL_PATTERNS) is None
