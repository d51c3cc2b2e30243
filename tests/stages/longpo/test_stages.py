"""longpo_pairs on real essays with a context-echo backend (spec longpo.md 4 and 6): the fake
model answers with the number of context words it was given, so a test can tell which context
each answer came from; it stands in for pi_S, whose answers carry no such trace."""

from __future__ import annotations

import re

import pytest

from gpu_jobs.generate import CachedGenerator, FileGenerationCache, Generation, GenerationError
from stages.base import Dropped, Measured, Rejected
from stages.longpo import core
from stages.longpo.stages import LongPOPairs
from tests.conftest import decisions
from tests.fixtures.openai_server import echo

SMALL = {"min_chunk_tokens": 150, "max_chunk_tokens": 400, "min_document_tokens": 800, "target_len": 4000,
         "answer_tokens": 64, "question_room": 64, "template_tokens": 32, "max_short_tokens": 1000}


class EchoModel:
    """The fixture server's context-echo replies (four numbered questions; answers that name how
    many words of context came before the question), in process, with scripted variations."""

    model = "echo"
    backend = "local"

    def __init__(self, question_words: int = 0, answer: str | None = None, fail: bool = False):
        self.prompts: list[str] = []
        self.question_words, self.answer, self.fail = question_words, answer, fail
        self.calls = self.hits = 0

    def generate_full(self, messages, params):
        content = messages[-1]["content"]
        self.prompts.append(content)
        self.calls += 1
        if self.fail:
            raise GenerationError("the server answered 400")
        if self.answer is not None and "questions about the text above" not in content:
            return Generation(self.answer)
        if self.question_words and "questions about the text above" in content:
            pad = " ".join(["detail"] * self.question_words)
            return Generation("\n".join(f"{k}: How does part {k} connect to the rest {pad}?" for k in range(1, 5)))
        return Generation(echo(content))


def seen(answer: str) -> int:
    return int(re.search(r"Context words counted: (\d+)", answer).group(1))


def stage(model=None, seed=0, **params):
    s = LongPOPairs(LongPOPairs.Params(**{**SMALL, **params}), seed=seed)
    s._short = s._long = model or EchoModel()  # stands in for the model setup() would load
    return s


@pytest.fixture(scope="module")
def essays(real_docs):
    docs = [d for d in real_docs if d["source"] == "paul_graham"]
    return sorted(docs, key=lambda d: -len(d["text"]))[:4]


def rows_of(outs):
    return [o for o in outs if isinstance(o, dict)]


def run(s, docs):
    return [o for d in docs for o in s.process(d)]


def test_chosen_comes_from_the_short_chunk_and_rejected_from_the_whole_document(essays):
    rows = rows_of(run(stage(), essays))
    assert rows, "the longest essays give pairs"
    for row in rows:
        n = row["n_turns"]
        assert 1 <= n <= 4 and len(row["questions"]) == len(row["chosens"]) == len(row["rejecteds"]) == n
        long_words = len(row["long_context"].split())
        for k in range(n):
            chunk = row["short_prompts"][k][: -len(core.CONTEXT_SEPARATOR + row["questions"][k])]
            assert chunk in row["long_context"] and row["short_tokens"][k] < row["long_tokens"]
            assert seen(row["chosens"][k]) == len(chunk.split()) < long_words  # chosen: the chunk alone
            assert seen(row["rejecteds"][k]) == long_words  # rejected: the whole long context
            assert row["questions"][k].startswith(core.LEAD_INS)
        # TRL: the prompt holds the long context and question 1; chosen/rejected continue it turn by turn
        assert row["prompt"] == [{"role": "user", "content": row["long_context"] + "\n\n" + row["questions"][0]}]
        for side, answers in (("chosen", row["chosens"]), ("rejected", row["rejecteds"])):
            msgs = row[side]
            assert [m["role"] for m in msgs] == ["assistant"] + ["user", "assistant"] * (n - 1)
            assert [m["content"] for m in msgs if m["role"] == "assistant"] == answers
            assert [m["content"] for m in msgs if m["role"] == "user"] == row["questions"][1:]


def test_a_long_document_is_cut_from_the_left_and_no_question_is_ever_cut(essays):
    model = EchoModel()
    s = stage(model, target_len=1400)
    outs = run(s, essays)
    rows = rows_of(outs)
    assert any(r["chunks_left_out"] > 0 for r in rows)
    long_prompts = [p for p in model.prompts if core.CHUNK_SEPARATOR in p]
    for row in rows:
        assert row["long_tokens"] + 64 <= 1400
        tail = row["long_context"] + core.CONTEXT_SEPARATOR
        asked = [p for p in long_prompts if p.startswith(tail)]
        assert len(asked) == row["n_turns"]
        assert sorted(p[len(tail):] for p in asked) == sorted(row["questions"])  # each question whole, at the end
    # a question too long for the room left drops its turn (and the document), and is never sent cut
    huge = EchoModel(question_words=900)
    outs = decisions(stage(huge, target_len=1400, max_short_tokens=5000).process(essays[0]))
    assert isinstance(outs[-1], Dropped) and "long prompt over target_len" in outs[-1].detail
    assert not any(core.CHUNK_SEPARATOR in p for p in huge.prompts)  # no long prompt was sent at all


def test_same_seed_same_pairs_and_a_cached_rerun_generates_nothing(essays, tmp_path):
    first = run(stage(seed=5), essays)
    again = run(stage(seed=5), essays)
    assert rows_of(first) == rows_of(again)
    other = rows_of(run(stage(seed=6), essays))
    assert [r["questions"] for r in other] != [r["questions"] for r in rows_of(first)]  # the seed matters

    def cached(folder):
        inner = EchoModel()
        return CachedGenerator(inner, FileGenerationCache(folder)), inner

    gen1, inner1 = cached(tmp_path)
    out1 = rows_of(run(stage(gen1, seed=5), essays))
    gen2, inner2 = cached(tmp_path)  # a rerun reads what the first run kept
    outs2 = run(stage(gen2, seed=5), essays)
    assert rows_of(outs2) == out1 == rows_of(first)
    assert inner1.calls > 0 and inner2.calls == 0 and gen2.hits == inner1.calls
    made = sum(o.values.get("generations_made", 0) for o in outs2 if isinstance(o, Measured))
    cached = sum(o.values.get("generations_cached", 0) for o in outs2 if isinstance(o, Measured))
    assert made == 0 and cached == inner1.calls  # every call counted, on rows and drops alike


def test_refusals_and_repetition_drop_turns_and_a_failed_call_rejects_the_document(essays):
    refusing = decisions(stage(EchoModel(answer="I'm sorry, but I cannot answer questions about this text.")).process(
        essays[0]))
    assert isinstance(refusing[-1], Dropped) and refusing[-1].reason == "no pair left"
    assert "chosen refused" in refusing[-1].detail
    m = next(o for o in stage(EchoModel(answer="I'm sorry, but I cannot answer questions about this text."))
             .process(essays[0]) if isinstance(o, Measured)).values
    assert m["turns"] == 0 and m["turn dropped: chosen refused"] == m["chunks_asked"] > 0
    looping = decisions(stage(EchoModel(answer="the " * 80)).process(essays[0]))
    assert "chosen repeated words" in looping[-1].detail
    failed = decisions(stage(EchoModel(fail=True)).process(essays[0]))
    assert [type(o) for o in failed] == [Rejected] and failed[0].reason == "generation failed"


def test_short_documents_and_single_chunk_documents_give_no_pair(essays):
    short = decisions(stage().process({"id": "s", "text": "One short paragraph.\n\nAnother."}))
    assert [type(o) for o in short] == [Dropped] and short[0].reason == "shorter than min_document_tokens"
    one = decisions(stage(min_document_tokens=0, min_chunk_tokens=150, max_chunk_tokens=100_000).process(essays[0]))
    assert [type(o) for o in one] == [Dropped] and one[0].reason == "fewer than 2 chunks"
    assert decisions(stage().process({"id": "e", "text": ""}))[0].reason == "empty document"
