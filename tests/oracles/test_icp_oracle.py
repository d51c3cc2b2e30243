"""In-Context Pretraining (spec icp.md 3.4, 3.5, 5): the paper's greedy traversal checked step by
step with a graph built here from the run's published kNN lists, on CPython's sources (the
product's tests use the essays, KJV chapters and Python docs), through pipelines/icp.yaml. The
graph: an edge u-v when either lists the other; degree = distinct neighbours. Every step that is
not a jump goes to the most similar unvisited neighbour; every run starts at an unvisited document
of minimum degree; every kept document is visited once; no kept pair is over the dedup threshold;
the contexts are the path's documents, in order, cut into windows. Written apart from stages/icp*."""

from __future__ import annotations

from collections import defaultdict

import pyarrow.parquet as pq

from tests.conftest import REPO, build_corpus, run_cli, write_jsonl


def _table(path):
    return pq.read_table(str(path)).to_pylist()


def test_the_walk_obeys_the_papers_rule_on_cpython_sources(tmp_path):
    docs = sorted(pq.read_table(f"{build_corpus('python_sources', tmp_path)}/data").to_pylist(),
                  key=lambda d: d["id"])[::3][:180]
    src = write_jsonl(tmp_path / "src.jsonl", docs)
    spec = (REPO / "pipelines" / "icp.yaml").read_text().replace("context_length: 8192", "context_length: 2048")
    (tmp_path / "icp.yaml").write_text(spec)
    done = run_cli("run", str(tmp_path / "icp.yaml"), "--input", str(src), "--output", str(tmp_path / "out"),
                   "--catalog", str(tmp_path / "c.duckdb"), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    order = sorted(_table(out / "order" / "data"), key=lambda r: r["pos"])
    kept = {r["id"] for r in _table(out / "dedup" / "data") if r["keep"]}
    assert sorted(r["id"] for r in order) == sorted(kept)  # each kept document once
    nbrs: dict[str, dict[str, float]] = defaultdict(dict)
    for r in _table(out / "knn" / "data"):
        if r["id"] not in kept:
            continue
        for v, s in zip(r["nbr_ids"], r["nbr_sims"], strict=True):
            if v in kept and v != r["id"]:
                assert s < 0.95, (r["id"], v, s)  # spec 3.3: near-duplicates were removed
                nbrs[r["id"]][v] = max(s, nbrs[r["id"]].get(v, s))
                nbrs[v][r["id"]] = max(s, nbrs[v].get(r["id"], s))
    degree = {d: len(nbrs[d]) for d in kept}
    unvisited = set(kept)
    jumps = 0
    for k, r in enumerate(order):
        d = r["id"]
        if k == 0 or r["via_jump"]:
            jumps += k > 0
            assert degree[d] == min(degree[x] for x in unvisited), (k, d)
            if k:  # a jump only when the previous document had no unvisited neighbour left
                assert not [v for v in nbrs[order[k - 1]["id"]] if v in unvisited], k
        else:
            prev = order[k - 1]["id"]
            options = {v: s for v, s in nbrs[prev].items() if v in unvisited}
            assert d in options and options[d] >= max(options.values()) - 1e-6, (k, prev, d)
        unvisited.discard(d)
    assert jumps < len(order) / 2  # a graph walk, not a shuffle
    # spec 3.6: the contexts, in traversal order, are the documents in path order cut into windows
    # of L: the spans read in order name the path's documents, each from token 0 on, contiguously
    contexts = sorted(_table(out / "data"), key=lambda r: r["ctx_index"])
    assert contexts and all(len(c["input_ids"]) == 2048 for c in contexts)
    seq, next_offset = [], {}
    for c in contexts:
        at = 0
        for sp in c["spans"]:
            assert sp["start"] == at and sp["end"] > sp["start"]  # spans tile the context
            at = sp["end"]
            assert sp["doc_tok_offset"] == next_offset.get(sp["doc_id"], 0), sp
            next_offset[sp["doc_id"]] = sp["doc_tok_offset"] + sp["end"] - sp["start"]
            if not seq or seq[-1] != sp["doc_id"]:
                seq.append(sp["doc_id"])
        assert at == 2048
    path = [r["id"] for r in order]
    assert seq == path[:len(seq)] and len(seq) >= len(path) - 10  # drop_last loses only the tail
