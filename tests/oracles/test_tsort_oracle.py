"""Ada-LEval TSort (spec ada-leval.md 4, 6): a round trip on the Chinese Debian Reference (the
product's tests use the essays, KJV chapters and books, and Python docs), whose chapters have
blank-line paragraphs, one-line paragraphs and chapter headings. Read in the answer's order, the
context before, the four segments and the context after are the book's lines in the book's order,
where only a heading may be missing: no line left out, none repeated, none out of place. LongBench's
`length` counts the characters of a Chinese item. Both evaluators score the items: the whole
answer is right for both, its first label alone only for the reference's. Written apart from
stages/adaleval*."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq

from catalog import Catalog
from tests.conftest import REPO, build_corpus, run_cli, write_jsonl

HEADING = re.compile(r"^(?:第\s*[0-9一二三四五六七八九十百]+\s*[章节回]|(?:chapter|book|part|act|scene|section)\s+\S+)"
                     r"|^(?:[ivxlcdm]+|\d+)\.?$", re.IGNORECASE)


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.split("\n") if ln.strip()]


def _restores(book: list[str], at: int, passage: list[str]) -> bool:
    """Whether the passage is the book's lines from ``at`` on, where only a heading may be missing."""
    for line in passage[1:]:
        at += 1
        while at < len(book) and book[at] != line:
            if not (HEADING.match(book[at]) and len(book[at].split()) <= 8):
                return False
            at += 1
        if at == len(book):
            return False
    return True


def test_segments_in_the_answers_order_restore_the_books_lines(tmp_path):
    chapters = sorted(pq.read_table(f"{build_corpus('debian_reference_zh', tmp_path)}/data").to_pylist(),
                      key=lambda r: r["id"])[:4]
    src = write_jsonl(tmp_path / "docs.jsonl", chapters)
    spec = (REPO / "pipelines" / "tsort.yaml").read_text().replace("settings: [2048, 8192, 32768]",
                                                                   "settings: [1024, 2048]")
    (tmp_path / "tsort.yaml").write_text(spec)
    done = run_cli("run", str(tmp_path / "tsort.yaml"), "--input", str(src), "--output", str(tmp_path / "out"),
                   "--catalog", str(tmp_path / "c.duckdb"), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    items = pq.read_table(str(tmp_path / "out" / "data")).to_pylist()
    assert len(items) >= 4
    lines_of = {c["id"]: _lines(c["text"]) for c in chapters}
    for it in items:
        answer = it["answer"]
        assert sorted(answer) == [1, 2, 3, 4]
        # answer[i] = the label of the segment that is i-th in the book: read the segments so
        ordered = [it["segments"][label - 1] for label in answer]
        passage = _lines("\n".join([it["context_before"], *ordered, it["context_after"]]))
        book = lines_of[it["book_id"]]
        starts = [k for k, line in enumerate(book) if line == passage[0]]  # a line may recur (a command)
        assert any(_restores(book, k, passage) for k in starts), it["id"]
        # LongBench's length of a Chinese item: its characters, spaces not counted
        assert it["language"] == "zh"
        assert it["length"] == sum(len(re.sub(r"\s", "", x)) for x in (it["input"], it["context"], *it["answers"]))

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
