"""tsort_items on the real KJV books and Paul Graham essays (spec ada-leval.md 4 and 8,
eval-formats.md 3): lengths in their windows by the named tokenizer, answers that restore the text,
LongBench fields, determinism."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from gpu_jobs.models import load_tokenizer
from stages.adaleval.tsort import TSortItems
from stages.base import Dropped, Measured

SETTINGS = (2048, 8192)


@pytest.fixture(scope="module")
def books(tmp_path_factory):
    from pipelines.commands import corpora

    folder, _ = corpora.build("kjv_books", str(tmp_path_factory.mktemp("kjv") / "kjv_books"))
    rows = sorted(pq.read_table(f"{folder}/data").to_pylist(), key=lambda r: r["id"])
    return [rows[0], rows[39], rows[64]]  # Genesis (long), Matthew, Jude (short)


def items_of(stage, docs):
    return [o for d in docs for o in stage.process(d) if isinstance(o, dict)]


def test_items_fit_their_window_and_their_answer_restores_the_text(books, real_docs):
    essays = sorted((d for d in real_docs if d["source"] == "paul_graham"), key=lambda d: -len(d["text"]))[:2]
    docs = books + essays
    items = items_of(TSortItems(TSortItems.Params(settings=SETTINGS), seed=1), docs)
    tok = load_tokenizer("smollm2")
    by_id = {d["id"]: re.sub(r"\n\s*\n", "\n", d["text"]) for d in docs}  # paragraphs joined by one newline
    assert {i["length_bucket"] for i in items} == set(SETTINGS)
    assert {i["book_id"] for i in items} >= {books[0]["id"], essays[0]["id"]}
    for it in items:
        s = it["length_bucket"]
        tokens = len(tok.encode(it["prompt"], add_special_tokens=False).ids)  # counted anew
        assert tokens == it["prompt_tokens"] == it["length_tokens"] and 0.8 * s <= tokens <= s
        assert sorted(it["answer"]) == [1, 2, 3, 4] and json.loads(it["answers"][0]) == it["answer"]
        ordered = [it["segments"][label - 1] for label in it["answer"]]
        # before, the segments in the answer's order, after: one contiguous run of the source's lines
        assert "\n".join([it["context_before"], *ordered, it["context_after"]]) in by_id[it["book_id"]]
        assert it["para_offset"] == sorted(it["para_offset"]) and len(set(it["para_offset"])) == 4
        assert it["segments"] != ordered or it["answer"] == [1, 2, 3, 4]
        assert it["length"] == sum(len(t.split()) for t in (it["input"], it["context"], *it["answers"]))
    assert len({i["_id"] for i in items}) == len(items)
    assert len({(i["book_id"], tuple(i["para_offset"]), i["length_bucket"]) for i in items}) == len(items)


def test_same_seed_same_items_and_a_short_document_gives_none(books):
    first = items_of(TSortItems(TSortItems.Params(settings=SETTINGS), seed=4), books[:2])
    again = items_of(TSortItems(TSortItems.Params(settings=SETTINGS), seed=4), books[:2])
    other = items_of(TSortItems(TSortItems.Params(settings=SETTINGS), seed=5), books[:2])
    assert first == again and first != other
    outs = list(TSortItems(TSortItems.Params(settings=(32768,)), seed=0).process(books[2]))  # Jude: ~1K tokens
    assert [type(o) for o in outs if not isinstance(o, Measured)] == [Dropped]


def test_longbench_length_counts_characters_for_chinese():
    """LongBench's ``length``: words for English, characters for Chinese (issue 33, point 15)."""
    from stages.blocks.eval_view import longbench_length

    zh = "段落结构决定了文章的可读性。" * 10
    assert longbench_length("zh", zh) == len(zh)
    assert longbench_length(None, zh) == len(zh)  # no language given: read off the script
    assert longbench_length("en", "three plain words") == 3
    assert longbench_length(None, "three plain words", "and two") == 5


def test_a_text_without_a_language_is_read_off_its_script():
    from stages.blocks.eval_view import longbench_length, script_language

    assert script_language("段落结构决定了文章的可读性。") == "zh"
    assert script_language("これは日本語の文章です。") == "ja"
    korean = "한국어는 띄어쓰기를 합니다"  # a spaced script: words, not characters
    assert script_language(korean) == "en" and longbench_length(None, korean) == 3
