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


def test_generation_failures_reject_their_document_and_the_run_goes_on(real_docs, tmp_path):
    """Against the local OpenAI-compatible server (tests/fixtures/openai_server.py, scripted by
    markers in the documents): a prompt answered with HTTP 400, an answer refused, one with no
    content (filtered) and one cut by the token limit each become a reject with its reason; the
    document answered in full becomes a row."""
    from tests.gpu_jobs.test_generate import _server

    proc, port = _server()
    try:
        essays = [d for d in sorted(real_docs, key=lambda d: d["id"]) if d["source"] == "paul_graham"][:5]
        marks = ["[[answer:ok]]", "[[questions:fail]]", "[[answer:refuse]]", "[[answer:null]]", "[[answer:cut]]"]
        rows = [{"id": f"{m.strip('[]').replace(':', '-')}", "text": d["text"][:2400] + "\n\n" + m}
                for d, m in zip(essays, marks, strict=True)]
        inp = write_jsonl(tmp_path / "docs.jsonl", rows)
        spec = (REPO / "pipelines" / "longalign.yaml").read_text().replace(
            "model: smollm2-135m, backend: local, max_document_chars: 6000, question_tokens: 160, answer_tokens: 160",
            f"model: smollm2-135m, backend: openai, base_url: 'http://127.0.0.1:{port}/v1', api_key_env: null, "
            "max_document_chars: 3000, question_tokens: 96, answer_tokens: 400, timeout_s: 300, retries: 0").replace(
            "max_len: 8192, packs_per_step: 8", "max_len: 2048, packs_per_step: 2")
        assert "backend: openai" in spec
        pipe = tmp_path / "longalign.yaml"
        pipe.write_text(spec)
        r = run_cli("run", str(pipe), "--input", str(inp), "--output", str(tmp_path / "out"),
                    "--catalog", str(tmp_path / "c.duckdb"), "--quiet")
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        proc.terminate()
        proc.wait()
    rejects = {x["record_id"]: x for x in pq.read_table(str(tmp_path / "out" / ".longforge" / "rejects.parquet"))
               .to_pylist()}
    assert rejects["questions-fail"]["reason"] == "generation failed" and "400" in rejects["questions-fail"]["detail"]
    assert rejects["answer-refuse"]["reason"] == "answer refused"
    assert rejects["answer-null"]["reason"] == "answer refused" and "content_filter" in rejects["answer-null"]["detail"]
    assert rejects["answer-cut"]["reason"] == "answer cut by the token limit"
    assert all(x["kind"] == "rejected" for x in rejects.values())
    made = pq.read_table(str(tmp_path / "out" / "messages")).to_pylist()
    assert [m["id"] for m in made] == ["answer-ok#q"] and "answer-ok" not in rejects
