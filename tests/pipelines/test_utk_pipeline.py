"""pipelines/utk.yaml at 32K on the real corpora: every document read back from the output files'
tokens and labels alone, token for token and its text byte for byte (issue 5, must show)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from catalog import Catalog
from stages.utk import core, parser
from tests.conftest import REPO, run_cli

CORPORA = ("paul_graham", "kjv_chapters", "python_docs")


def _run(corpora_dir: Path, out: Path, catalog: Path, *extra: str):
    args = ["run", str(REPO / "pipelines" / "utk.yaml"), "--output", str(out), "--catalog", str(catalog), "--quiet",
            *extra]
    for corpus in CORPORA:
        args += ["--input", str(corpora_dir / corpus)]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def utk_run(corpora_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("utk")
    a = _run(corpora_dir, base / "a", base / "c.duckdb")
    b = _run(corpora_dir, base / "b", base / "c.duckdb")
    return a, b, base / "c.duckdb"


def _markers(out: Path) -> tuple[core.Markers, dict]:
    meta = json.loads((out / "utk" / "markers.json").read_text())
    ids = {k: tuple(v) for k, v in meta["marker_ids"].items()}
    heads = {int(k.split("_")[1]): v for k, v in ids.items() if k.startswith("head_")}
    tails = {int(k.split("_")[1]): v for k, v in ids.items() if k.startswith("tail_")}
    return core.Markers(heads, tails, ids["label_open"], ids["label_close"], ids["bt_open"], ids["bt_sep"],
                        ids["bt_close"]), meta


def test_every_document_read_back_token_for_token_and_byte_for_byte(utk_run, real_docs, tokenized_docs):
    out, _, _ = utk_run
    markers, meta = _markers(out)
    samples = pq.read_table(str(out / "data"), columns=["id", "tokens", "labels"]).sort_by("id")  # sample order
    assert samples.num_rows > 20
    lengths = {len(t) for t in samples.column("tokens").to_pylist()}
    assert lengths == {32768} == {len(x) for x in samples.column("labels").to_pylist()}
    got = parser.documents_from_samples(
        ((np.asarray(t, np.int32), np.asarray(lab, np.int32))
         for t, lab in zip(samples.column("tokens").to_pylist(), samples.column("labels").to_pylist(), strict=True)),
        markers, meta["eos_id"])
    by_tokens = {np.asarray(ids, np.int32).tobytes(): i for i, ids in tokenized_docs.items()}
    have = Counter(np.asarray(ids, np.int32).tobytes() for ids in tokenized_docs.values())
    found = Counter(g.tobytes() for g in got)
    assert len(got) > 1000 and not found - have  # each one a document, no more often than the input has it
    # the documents the output holds whole are all of them but those after the last full sample
    removed = pq.read_table(str(out / ".longforge" / "rejects.parquet")).to_pylist()
    dropped = [r for r in removed if r["kind"] == "dropped"]
    truncated = [r for r in removed if r["kind"] == "truncated"]
    assert len(got) + len(dropped) + len(truncated) == len(tokenized_docs)  # + the one cut by the last sample's end
    assert len(truncated) == 1
    # and their text, decoded, is the input text byte for byte
    tok = Tokenizer.from_file(str(out / "utk" / "tokenizer.json"))
    text_of = {d["id"]: d["text"] for d in real_docs}
    for g in got:
        text = tok.decode(g[:-1].tolist(), skip_special_tokens=False)
        assert text.encode() == text_of[by_tokens[g.tobytes()]].encode()


def test_records_and_markers_are_described(utk_run):
    out, _, catalog = utk_run
    t = pq.read_table(str(out / "data"))
    meta = json.loads(t.schema.metadata[b"longforge.utk"])
    assert meta["markers"] == "special" and meta["p"] == 0.8 and meta["context_length"] == 32768
    rows = t.slice(0, 3).to_pylist()
    for r in rows:
        assert r["position_ids"] == list(range(32768)) and len(r["loss_mask"]) == 32768
        assert r["tokens"][1:] == r["labels"][:-1]
        assert all(c["doc_id"] for c in r["chunks"])
    markers = pq.read_table(str(out / "markers")).to_pylist()
    assert {m["id"] for m in markers} >= {"head_2", "tail_1", "label_open", "bt_open", "bt_sep", "bt_close"}
    assert all(len(m["token_ids"]) == 1 and m["special"] for m in markers)
    view = pq.read_table(str(out / "text_view")).to_pylist()
    assert view and any("<|utk_backtrace|>" in v["text"] for v in view if v["utk_applied"])
    rows = Catalog(str(catalog)).query("SELECT stage, reconciles FROM stage_accounting")[1]
    assert ("utk", True) in rows and all(ok for _, ok in rows)  # a per-group stage reconciles by its inputs
    m = dict(((s, n), v) for s, n, v in Catalog(str(catalog)).query("SELECT stage, name, value FROM metrics")[1])
    assert m[("utk", "samples")] == t.num_rows
    assert 0 < m[("utk", "marker_token_share")] < 0.1
    assert m[("utk", "chunks_per_split_piece")] >= 2
    assert m[("utk", "knotted_samples")] == sum(t.column("utk_applied").to_pylist())


def test_same_bytes_on_rerun(utk_run):
    a, b, _ = utk_run
    for sub in ("data", "markers", "text_view", "utk"):
        fa = sorted(p for p in (a / sub).rglob("*") if p.is_file())
        fb = sorted(p for p in (b / sub).rglob("*") if p.is_file())
        assert fa and [p.read_bytes() for p in fa] == [p.read_bytes() for p in fb], sub


def test_knotted_share_close_to_p(utk_run):
    from scipy.stats import binomtest

    out, _, _ = utk_run
    applied = pq.read_table(str(out / "data"), columns=["utk_applied"]).column("utk_applied").to_pylist()
    assert binomtest(sum(applied), len(applied), 0.8).pvalue > 1e-3
    assert Counter(applied)[False] > 0  # some samples stay plain


def test_the_document_cut_by_the_last_sample_is_recorded_with_what_it_lost(utk_run, tokenized_docs):
    """Issue 11, point 5: the straddling document's tail is not lost silently; the note in rejects says
    how many of its tokens the samples hold, and the samples' chunks agree token for token."""
    out, _, catalog = utk_run
    cat = Catalog(str(catalog))
    run = cat.query(f"SELECT run_id FROM runs WHERE output_path = '{out}'")[1][0][0]
    rows = cat.query(f"SELECT record_id, reason, detail FROM rejects WHERE run_id = '{run}' AND kind = 'truncated'")[1]
    assert len(rows) == 1 and rows[0][1] == "tail after the last full sample"
    doc_id, _, detail = rows[0]
    lost, total = (int(x) for x in detail.split(" tokens")[0].split(" of "))
    assert total == len(tokenized_docs[doc_id])
    chunks = [c for cs in pq.read_table(str(out / "data"), columns=["chunks"]).column("chunks").to_pylist()
              for c in cs if c["doc_id"] == doc_id]
    assert chunks and max(c["src_end"] for c in chunks) == total - lost  # the head is there, the tail is not
    assert sum(c["src_end"] - c["src_start"] for c in chunks) == total - lost
    m = dict(((s, n), v) for s, n, v in cat.query(f"SELECT stage, name, value FROM metrics WHERE run_id = '{run}'")[1])
    assert m[("utk", "documents_truncated")] == 1 and m[("utk", "tokens_cut_from_truncated")] == lost > 0


def test_several_streams_each_read_back_with_their_own_seeds(corpora_dir, tmp_path, tokenized_docs):
    """``groups: 3``: documents spread over three streams by a seeded hash, each packed on its own
    worker. Every stream's documents read back token for token; each stream leaves at most one
    document cut; sample ids and seeds name their stream, so no two samples share a seed."""
    spec = (REPO / "pipelines" / "utk.yaml").read_text().replace("context_length: 32768 ", "context_length: 8192 ")
    spec = spec.replace("markers: special ", "groups: 3\n      markers: special ")
    pipe = tmp_path / "utk3.yaml"
    pipe.write_text(spec)
    args = ["run", str(pipe), "--output", str(tmp_path / "out"), "--catalog", str(tmp_path / "c.duckdb"), "--quiet",
            "--runner", "local", "--workers", "2"]
    for corpus in CORPORA:
        args += ["--input", str(corpora_dir / corpus)]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "out"
    markers, meta = _markers(out)
    assert meta["groups"] == 3
    t = pq.read_table(str(out / "data"), columns=["id", "tokens", "labels", "seed"])
    streams = Counter(i.split("-")[1] for i in t.column("id").to_pylist())
    assert sorted(streams) == ["00000", "00001", "00002"] and min(streams.values()) > 3
    seeds = t.column("seed").to_pylist()
    assert len(set(seeds)) == len(seeds)
    rows = sorted(t.to_pylist(), key=lambda x: x["id"])  # stream by stream, each in sample order
    got = []
    for stream in streams:
        got += parser.documents_from_samples(
            ((np.asarray(x["tokens"], np.int32), np.asarray(x["labels"], np.int32))
             for x in rows if x["id"].split("-")[1] == stream), markers, meta["eos_id"])
    have = Counter(np.asarray(ids, np.int32).tobytes() for ids in tokenized_docs.values())
    found = Counter(g.tobytes() for g in got)
    assert not found - have
    removed = pq.read_table(str(out / ".longforge" / "rejects.parquet")).to_pylist()
    truncated = [x for x in removed if x["kind"] == "truncated"]
    dropped = [x for x in removed if x["kind"] == "dropped"]
    assert 1 <= len(truncated) <= 3
    assert len(got) + len(dropped) + len(truncated) == len(tokenized_docs)
