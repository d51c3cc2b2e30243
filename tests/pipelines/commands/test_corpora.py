"""The offline corpora build into document datasets with stable ids and provenance."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pipelines.commands import corpora
from schemas import DOCUMENT

EXPECTED = {  # name: (minimum documents, language)
    "paul_graham": (49, "en"),
    "kjv_books": (66, "en"),
    "kjv_chapters": (1189, "en"),
    "peoples_daily_1998": (19000, "zh"),
    "debian_reference_id": (12, "id"),
    "debian_reference_zh": (12, "zh"),
    "python_sources": (300, "en"),
    "python_docs": (50, "en"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_builds_with_unique_stable_ids(name, tmp_path):
    out, n = corpora.build(name, str(tmp_path / name))
    minimum, lang = EXPECTED[name]
    assert n >= minimum
    t = pq.read_table(str(tmp_path / name / "data"))
    assert t.schema.names == DOCUMENT.arrow.names
    rows = t.to_pylist()
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids) == n
    assert all(r["language"] == lang and r["license"] and r["source"] and r["text"].strip() for r in rows)
    out2, _ = corpora.build(name, str(tmp_path / "again"))
    assert (tmp_path / name / "data").joinpath(sorted(p.name for p in (tmp_path / name / "data").iterdir())[0]) \
        .read_bytes() == next((tmp_path / "again" / "data").iterdir()).read_bytes()


def test_kjv_books_and_chapters_agree():
    books = list(corpora.kjv_books())
    chapters = list(corpora.kjv_chapters())
    assert len(books) == 66 and len(chapters) == 1189
    assert sum(json.loads(b["metadata"])["verses"] for b in books) == \
        sum(json.loads(c["metadata"])["verses"] for c in chapters)
    assert books[0]["text"].startswith("In the beginning God created")
    assert json.loads(books[-1]["metadata"])["book"] == "Revelation"


def test_unknown_corpus_and_missing_package(monkeypatch, tmp_path):
    monkeypatch.setenv("LONGFORGE_HOME", str(tmp_path))
    with pytest.raises(corpora.CorpusNotAvailable, match="make corpora"):
        list(corpora.paul_graham())
