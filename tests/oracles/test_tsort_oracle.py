"""Ada-LEval TSort (spec ada-leval.md 4): a round trip on the KJV's books (the product's tests use
the essays, KJV chapters and Python docs). The context before, the four segments read in the
answer's order and the context after, put together, are one passage of the book: nothing left
out but headings, nothing repeated, nothing out of place. Written apart from stages/adaleval*."""

from __future__ import annotations

import pyarrow.parquet as pq

from tests.conftest import REPO, build_corpus, run_cli, write_jsonl


def _words(text: str) -> list[str]:
    return text.split()


def test_segments_in_the_answers_order_restore_a_passage_of_the_book(tmp_path):
    books = pq.read_table(f"{build_corpus('kjv_books', tmp_path)}/data").to_pylist()
    chosen = [b for b in books if b["id"].endswith(("/Ruth", "/Jonah", "/Philemon", "/Esther"))] or books[:4]
    src = write_jsonl(tmp_path / "books.jsonl", chosen)
    spec = (REPO / "pipelines" / "tsort.yaml").read_text().replace("settings: [2048, 8192, 32768]",
                                                                   "settings: [1024, 2048]")
    (tmp_path / "tsort.yaml").write_text(spec)
    done = run_cli("run", str(tmp_path / "tsort.yaml"), "--input", str(src), "--output", str(tmp_path / "out"),
                   "--catalog", str(tmp_path / "c.duckdb"), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    items = pq.read_table(str(tmp_path / "out" / "data")).to_pylist()
    assert len(items) >= 4
    text_of = {b["id"]: " ".join(_words(b["text"])) for b in chosen}
    for it in items:
        answer = it["answer"]
        assert sorted(answer) == [1, 2, 3, 4]
        # answer[i] = the label of the segment that is i-th in the book: read the segments so
        ordered = [it["segments"][label - 1] for label in answer]
        passage = " ".join(_words("\n".join([it["context_before"], *ordered, it["context_after"]])))
        assert passage in text_of[it["book_id"]], it["id"]
        # LongBench's length: whitespace words of input, context and answer (English)
        assert it["length"] == sum(len(x.split()) for x in (it["input"], it["context"], *it["answers"]))
    # both scorers on the same items (spec 6): the whole answer is right for both; the answer's first
    # label alone is right for the reference's evaluator only (it compares the positions given)
    import json

    from catalog import Catalog

    for name, reply in (("whole", lambda a: f"Answer: {json.dumps(a)}"), ("first", lambda a: f"Answer: [{a[0]}]")):
        write_jsonl(tmp_path / f"{name}.jsonl", [{"id": it["id"], "answer": reply(it["answer"])} for it in items])
        done = run_cli("eval", "score", str(tmp_path / f"{name}.jsonl"), "--set", str(tmp_path / "out"),
                       "--catalog", str(tmp_path / "c.duckdb"))
        assert done.returncode == 0, done.stderr[-3000:]
        m = dict(Catalog(str(tmp_path / "c.duckdb")).query(
            "SELECT name, value FROM metrics WHERE stage = 'eval' AND run_id = "
            "(SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1)")[1])
        strict = [v for k, v in m.items() if k.startswith("accuracy:") and k.endswith(":strict")]
        reference = [v for k, v in m.items() if k.startswith("accuracy:") and k.endswith(":reference")]
        assert strict and reference and all(v == 100 for v in reference)
        assert all(v == (100 if name == "whole" else 0) for v in strict), (name, m)
