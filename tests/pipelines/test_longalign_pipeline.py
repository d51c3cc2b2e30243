"""pipelines/longalign.yaml with the real SmolLM2 generating questions and answers over real essays:
rows in messages format, packs that hold each row once with LongAlign weights, and a rerun that
generates nothing (the catalog's generation cache)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from catalog import Catalog
from tests.conftest import REPO, run_cli, write_jsonl


def test_long_documents_to_instruction_rows_and_packs(real_docs, tmp_path):
    essays = [d for d in sorted(real_docs, key=lambda d: d["id"]) if d["source"] == "paul_graham"][:2]
    inp = write_jsonl(tmp_path / "docs.jsonl", [{"id": d["id"], "text": d["text"]} for d in essays])
    spec = (REPO / "pipelines" / "longalign.yaml").read_text()
    spec = spec.replace("max_document_chars: 6000", "max_document_chars: 2500").replace(
        "question_tokens: 160, answer_tokens: 160", "question_tokens: 96, answer_tokens: 48").replace(
        "max_len: 8192, packs_per_step: 8", "max_len: 1024, packs_per_step: 2")
    pipe = tmp_path / "longalign.yaml"
    pipe.write_text(spec)
    catalog = tmp_path / "c.duckdb"
    args = ["run", str(pipe), "--input", str(inp), "--catalog", str(catalog), "--quiet"]
    r = run_cli(*args, "--output", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = pq.read_table(str(tmp_path / "a" / "messages")).to_pylist()
    dropped = pq.read_table(str(tmp_path / "a" / ".longforge" / "rejects.parquet")).to_pylist()
    assert len(rows) + len(dropped) == 2 and rows  # each document gives a row or a reason
    for row in rows:
        user, answer = row["messages"]
        assert user["role"] == "user" and user["content"].endswith(row["question"]) and answer["content"].strip()
    packs = pq.read_table(str(tmp_path / "a" / "data")).to_pylist()
    assert sorted(i for p in packs for i in p["seq_ids"]) == sorted(r["id"] for r in rows)
    for p in packs:
        assert len(p["input_ids"]) == len(p["weights"]) == 1024 and p["cu_seqlens"][-1] == 1024
        assert np.isclose(sum(p["weights"]), p["n_seqs"], rtol=1e-5)
    made = Catalog(str(catalog)).query("SELECT count(*) FROM generations")[1][0][0]
    assert made >= 2 * len(rows)
    r = run_cli(*args, "--output", str(tmp_path / "b"))  # a rerun: every generation from the cache
    assert r.returncode == 0, r.stderr[-3000:]
    assert Catalog(str(catalog)).query("SELECT count(*) FROM generations")[1][0][0] == made
    assert pq.read_table(str(tmp_path / "b" / "messages")).equals(pq.read_table(str(tmp_path / "a" / "messages")))
