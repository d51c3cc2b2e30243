"""agent_write and length_curation with a scripted writer (it stands in for the LLM: a plan of as
many lines as the instruction asks for, then "Section k" texts), spec longwriter.md section 6."""

from __future__ import annotations

import re

from gpu_jobs.generate import Generation
from stages import longwriter_core as core
from stages.base import Dropped, Measured, Rejected
from stages.longwriter import AgentWrite, LengthCuration
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

    from stages.longwriter import LongBenchWriteScore

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
