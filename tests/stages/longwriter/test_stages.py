"""agent_write and length_curation with a scripted writer (it stands in for the LLM: a plan of as
many lines as the instruction asks for, then "Section k" texts), spec longwriter.md section 6."""

from __future__ import annotations

import re

from gpu_jobs.generate import Generation
from stages.base import Dropped, Measured, Rejected
from stages.longwriter import core
from stages.longwriter.stages import AgentWrite, LengthCuration
from tests.conftest import decisions


class ScriptedWriter:
    model = "scripted"

    def __init__(self, finish: dict | None = None):
        self.prompts: list[str] = []
        self.calls = self.hits = 0
        self.finish = finish or {}  # section number -> finish_reason or text

    def generate_full(self, messages, params):
        content = messages[-1]["content"]
        self.prompts.append(content)
        self.calls += 1
        if "break down the following long-form writing instruction" in content:
            n = int(re.search(r"in (\d+) parts", content).group(1))
            return Generation("Here is the plan:\n\n" + "\n".join(
                f"Paragraph {k} - Main Point: part {k} - Word Count: 300 words" for k in range(1, n + 1)))
        k = int(re.search(r"now continue writing Paragraph (\d+)", content).group(1))
        special = self.finish.get(k)
        if special == "length":
            return Generation(f"Section {k} text that", "length")
        if special is not None:
            return Generation(special)
        return Generation(f"Paragraph {k}: Section {k} says something about the river.")


def _stage(writer, **params):
    stage = AgentWrite(AgentWrite.Params(**params), seed=3)
    stage._gen = writer  # stands in for the model setup() would load
    return stage


def test_sections_are_written_in_plan_order_each_seeing_exactly_the_text_before_it():
    writer = ScriptedWriter()
    outs = list(_stage(writer).process({"id": "w1", "text": "Write about rivers in 4 parts."}))
    row = next(o for o in outs if isinstance(o, dict))
    assert row["n_steps"] == 4 and row["word_targets"] == [300] * 4
    assert row["messages"] == [{"role": "user", "content": "Write about rivers in 4 parts."},
                               {"role": "assistant", "content": "\n\n".join(
                                   f"Section {k} says something about the river." for k in range(1, 5))}]
    section_prompts = writer.prompts[1:]
    for k, prompt in enumerate(section_prompts):
        so_far = prompt.split("Already written text:\n", 1)[1].split("\n\nPlease integrate", 1)[0]
        assert so_far == "\n\n".join(f"Paragraph {j}: Section {j} says something about the river."
                                     for j in range(1, k + 1))
    assert row["response_length"] == core.count_words(row["messages"][1]["content"])
    m = {k: v for o in outs if isinstance(o, Measured) for k, v in o.values.items()}
    assert m["sections"] == 4 and m["generations_made"] == 5


def test_a_51_step_plan_gives_no_row():
    outs = decisions(_stage(ScriptedWriter()).process({"id": "w2", "text": "Write about rivers in 51 parts."}))
    assert len(outs) == 1 and isinstance(outs[0], Dropped) and "51 steps" in outs[0].detail


def test_refused_cut_and_empty_sections_are_never_saved_as_text():
    refused = decisions(_stage(ScriptedWriter({2: "I'm sorry, but I can't help with that."})).process(
        {"id": "r", "text": "Write in 3 parts."}))
    cut = decisions(_stage(ScriptedWriter({3: "length"})).process({"id": "c", "text": "Write in 3 parts."}))
    empty = decisions(_stage(ScriptedWriter({1: "   "})).process({"id": "e", "text": "Write in 3 parts."}))
    assert [type(o) for o in refused] == [Rejected] and refused[0].reason == "section refused"
    assert "section 2 of 3" in refused[0].detail
    assert [type(o) for o in cut] == [Rejected] and cut[0].reason == "section cut by the token limit"
    assert [type(o) for o in empty] == [Dropped] and empty[0].reason == "empty section"


def test_curation_keeps_rows_that_follow_their_one_required_length():
    stage = LengthCuration(LengthCuration.Params())
    answer = " ".join(["word"] * 1000)
    rows = {
        "ok": "Write a 1000 words essay about rivers.",
        "long": "Write a 500 words essay about rivers.",  # 1000 produced: S_l 33
        "none": "Write an essay about rivers.",
        "two": "写5000字和三千字的文章",
        "zero": "Write a 10,000 words essay",  # the reference reads "000"
    }
    out = {rid: list(stage.process({"id": rid, "messages": [{"role": "user", "content": q},
                                                           {"role": "assistant", "content": answer}]}))[0]
           for rid, q in rows.items()}
    assert out["ok"]["length"] == 1000 and out["ok"]["score_length"] == 100.0
    assert out["long"].reason == "S_l below 80" and out["none"].reason == "no single required length"
    assert out["two"].reason == "no single required length" and out["zero"].reason == "length 0"
    better = LengthCuration(LengthCuration.Params(mode="better"))
    kept = list(better.process({"id": "z", "messages": [{"role": "user", "content": rows["zero"]},
                                                       {"role": "assistant", "content": answer}]}))[0]
    assert kept.reason == "S_l below 80" and "required 10000" in kept.detail


class ScriptedJudge:
    """Stands in for the judge LLM: a malformed reply first, then six ratings."""

    model = "judge"

    def __init__(self):
        self.calls = 0

    def generate_full(self, messages, params):
        self.calls += 1
        if self.calls % 2:
            return Generation("The response is good.")
        return Generation('```json\n{"Analysis": "ok", "Relevance": 5, "Accuracy": 4, "Coherence": 5, "Clarity": 4, '
                          '"Breadth and Depth": 3, "Reading Experience": 3}\n```')


def test_longbench_write_scores_length_and_asks_the_judge_again_when_its_reply_is_malformed():
    import json

    from stages.longwriter.stages import LongBenchWriteScore

    stage = LongBenchWriteScore(LongBenchWriteScore.Params(judge_asks=2))
    stage._gen = ScriptedJudge()
    pred = {"id": "p", "metadata": json.dumps({"prompt": "Write 10 words.", "length": 10,
                                               "response": "one two three four five six seven eight nine ten"})}
    sums: dict = {}
    for o in stage.process(pred):
        if isinstance(o, Measured):
            sums = o.values
        else:
            row = o
    assert stage._gen.calls == 2 and row["score_length"] == 100.0 and row["response_length"] == 10
    m = stage.summarize_metrics(sums)
    assert m["S_l"] == 100.0 and m["S_q"] == (100 + 75 + 100 + 75 + 50 + 50) / 6
    assert m["S"] == (m["S_l"] + m["S_q"]) / 2


# -- issue 33, point 19: the instruction pool (spec 3.1) ---------------------------------------------

# A known-answer table written here (hand-labelled requests; WildChat and GLM-4's SFT data are not
# offline): True = the request needs a multi-thousand-word answer.
POOL = [
    ("Write a 5000-word essay on the history of the printing press.", True),
    ("写一篇关于长江的长篇小说，至少三万字。", True),
    ("Please write a detailed report on renewable energy policy in the EU, covering every member state.", True),
    ("写一篇详细的报告，分析人工智能对就业市场的影响。", True),
    ("Write a comprehensive guide to setting up a home network, from buying the router onwards.", True),
    ("Draft a long story about a lighthouse keeper who finds a message in a bottle.", True),
    ("Word count: 3000. Topic: the causes of the First World War.", True),
    ("What is the capital of Australia?", False),
    ("Translate 'good morning' into French.", False),
    ("Write a haiku about autumn rain.", False),
    ("Summarise this paragraph in one sentence: The rain fell all day.", False),
    ("Write a 200-word product description for a steel water bottle.", False),
    ("给我讲个笑话。", False),
    ("Fix the bug in this function: def add(a, b): return a - b", False),
    ("Write an essay.", False),  # a long form, but nothing asks for length: a short essay serves
    # the review's cases
    ("Write a complete Python script that parses a CSV file.", False),
    ("Give me a detailed plan for my trip tomorrow.", False),
    ("请详细描述你的书包。", False),
    ("Write a detailed review of the film in three sentences.", False),
    ("How long is a typical novel?", False),
    ("一本长篇小说一般多少字？", False),
    ("Summarize this 10,000-word report in a paragraph.", False),
    ("Write a tweet about my 5,000-word thesis.", False),
    ("Write a novel about a family of lighthouse keepers.", True),
    ("写一本书，讲述长江沿岸的城市。", True),
]


def test_the_pool_rule_on_a_known_answer_table():
    wrong = [text for text, want in POOL if core.needs_long_output(text)[0] != want]
    assert not wrong, wrong
    assert core.needs_long_output("Write a 1500-word essay.", 2000) == (False, "states 1500 words")


def test_the_pool_stage_keeps_what_needs_long_output_and_drops_the_rest_with_the_reason():
    from stages.longwriter.stages import LongOutputPool

    stage = LongOutputPool(LongOutputPool.Params(), seed=0)
    stage.setup()
    outs = [o for k, (text, _) in enumerate(POOL) for o in stage.process({"id": f"r{k}", "text": text})]
    kept = {o["id"] for o in outs if isinstance(o, dict)}
    assert kept == {f"r{k}" for k, (_, want) in enumerate(POOL) if want}
    drops = [o for o in outs if isinstance(o, Dropped)]
    assert len(drops) == sum(1 for _, want in POOL if not want)
    assert all(d.reason == "short answer enough" for d in drops)


class ScriptedClassifier:
    model = "scripted"

    def __init__(self, replies):
        self.replies, self.calls, self.hits = list(replies), 0, 0

    def generate_full(self, messages, params):
        self.calls += 1
        assert "at least 2000 words" in messages[-1]["content"]
        return Generation(self.replies.pop(0))


def test_the_llm_method_asks_once_per_request_and_again_only_for_an_unreadable_reply():
    from stages.longwriter.stages import LongOutputPool

    stage = LongOutputPool(LongOutputPool.Params(method="llm"), seed=0)
    stage._gen = ScriptedClassifier(["Yes.", "no", "Well, it depends", "**No**", "maybe", "perhaps"])
    outs = [list(stage.process({"id": f"r{k}", "text": "Write something."})) for k in range(4)]
    assert isinstance(outs[0][0], dict) and isinstance(outs[1][0], Dropped)
    assert isinstance(outs[2][0], Dropped) and outs[2][0].reason == "short answer enough"  # asked again: No
    assert isinstance(outs[3][0], Dropped) and outs[3][0].reason == "no yes or no"
    assert stage._gen.calls == 6
