"""pipelines/icp.yaml on the real corpora (Paul Graham essays, KJV chapters, Python docs):
the invariants of spec section 5, the quality metrics in the catalog, and byte-identical reruns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from catalog import Catalog
from gpu_jobs.models import load_tokenizer
from stages.icp import core
from tests.conftest import REPO, run_cli
from tests.stages.icp.test_core import replay


@pytest.fixture(scope="module")
def icp_run(corpora_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("icp")
    catalog = base / "c.duckdb"
    outs = []
    for name in ("first", "second"):
        args = ["run", str(REPO / "pipelines" / "icp.yaml"), "--output", str(base / name), "--catalog", str(catalog),
                "--quiet"]
        for corpus in ("paul_graham", "kjv_chapters", "python_docs"):
            args += ["--input", str(corpora_dir / corpus)]
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(base / name)
    return outs, catalog


def _table(folder: Path):
    return pq.read_table(str(folder / "data")).to_pylist()


@pytest.fixture(scope="module")
def normalised(corpora_dir):
    """The documents as icp.yaml's first stage hands them on (id -> record), read and normalised
    here with the pipeline's own reader and stage: contexts are checked against these texts."""
    from pipelines.engine.plan import build_plan
    from pipelines.spec import load_pipeline
    from pipelines.storage.readers import read_shard

    plan = build_plan(load_pipeline(REPO / "pipelines" / "icp.yaml"),
                      inputs=[str(corpora_dir / c) for c in ("paul_graham", "kjv_chapters", "python_docs")])
    normalize = plan.stages[0].stage
    normalize.setup()
    docs = {}
    for shard in plan.shards:
        for rec in read_shard(shard, plan.spec.inputs, plan.spec.read):
            for out in normalize.process(rec):
                if isinstance(out, dict):
                    docs[out["id"]] = out
    return docs, plan


def test_order_is_a_permutation_of_the_kept_documents(icp_run):
    (out, _), _ = icp_run
    docs = {r["id"] for r in _table(out / "knn")}  # every embedded document
    dedup = _table(out / "dedup")
    kept = {r["id"] for r in dedup if r["keep"]}
    assert {r["id"] for r in dedup} == docs and len(kept) < len(docs)
    order = sorted(_table(out / "order"), key=lambda r: r["pos"])
    assert [r["pos"] for r in order] == list(range(len(order)))
    assert sorted(r["id"] for r in order) == sorted(kept)


def _knn_lists(out: Path):
    """The run's kNN lists over the kept documents, as row-index arrays (-1 / NaN where a neighbour
    was dropped), and the kept ids in index order."""
    order = sorted(_table(out / "order"), key=lambda r: r["pos"])
    kept = sorted(r["id"] for r in order)
    index = {d: i for i, d in enumerate(kept)}
    knn = {r["id"]: r for r in _table(out / "knn")}
    k = max(len(r["nbr_ids"]) for r in knn.values())
    ids = np.full((len(kept), k), -1, dtype=np.int64)
    sims = np.full((len(kept), k), np.nan, dtype=np.float32)
    for d in kept:
        row = [(index[v], s) for v, s in zip(knn[d]["nbr_ids"], knn[d]["nbr_sims"], strict=True) if v in index]
        for j, (v, s) in enumerate(row):
            ids[index[d], j], sims[index[d], j] = v, s
    return ids, sims, kept


def _graph(out: Path):
    ids, sims, kept = _knn_lists(out)
    order = sorted(_table(out / "order"), key=lambda r: r["pos"])
    index = {d: i for i, d in enumerate(kept)}
    graph = core.union_graph(ids, sims)
    walk = core.Walk(np.array([index[r["id"]] for r in order]), np.array([r["run"] for r in order]),
                     np.array([r["via_jump"] for r in order]),
                     np.array([np.nan if r["sim_prev"] is None else r["sim_prev"] for r in order], dtype=np.float32))
    return graph, walk, kept


def test_union_graph_build_matches_the_previous_one_on_real_lists(icp_run, tmp_path):
    """Issue 19: the chunked in-place build, from arrays and from .npy files, gives the previous
    implementation's graph bit for bit on the real corpora's kNN lists."""
    from tests.stages.icp.test_union_graph import assert_same, old_union_graph

    (out, _), _ = icp_run
    ids, sims, _ = _knn_lists(out)
    expected = old_union_graph(ids, sims)
    assert expected.indices.size > 0
    assert_same(core.union_graph(ids, sims, chunk_rows=64), expected)
    np.save(tmp_path / "ids.npy", ids.astype(np.int32))
    np.save(tmp_path / "sims.npy", sims)
    assert_same(core.union_graph(core.KnnLists(str(tmp_path / "ids.npy"), str(tmp_path / "sims.npy")), None,
                                 chunk_rows=100), expected)


def test_every_step_obeys_the_greedy_rule_and_jumps_land_on_min_degree(icp_run):
    (out, _), _ = icp_run
    graph, walk, _ = _graph(out)
    replay(graph, walk)


def test_no_kept_pair_is_above_the_dedup_threshold(icp_run):
    (out, _), _ = icp_run
    graph, _, _ = _graph(out)
    assert graph.weights.max() < 0.95
    dropped = [r for r in _table(out / "dedup") if not r["keep"]]
    assert all(r["dup_sim"] >= 0.95 and r["dup_method"] == "embed" for r in dropped)


def test_contexts_conserve_tokens(icp_run, normalised):
    (out, _), _ = icp_run
    docs = {i: r["text"] for i, r in normalised[0].items()}
    order = sorted(_table(out / "order"), key=lambda r: r["pos"])
    tok = load_tokenizer("smollm2")
    eos = tok.token_to_id("<|endoftext|>")
    stream = []
    for r in order:
        stream += tok.encode(docs[r["id"]], add_special_tokens=False).ids + [eos]
    contexts = sorted(_table(out), key=lambda r: r["ctx_index"])
    assert all(len(c["input_ids"]) == 8192 for c in contexts)
    flat = [t for c in contexts for t in c["input_ids"]]
    assert len(contexts) == len(stream) // 8192 and flat == stream[: len(flat)]
    # Shuffled: the published order is not the traversal order.
    assert [c["ctx_index"] for c in _table(out)] != list(range(len(contexts)))


def test_quality_metrics_in_the_catalog(icp_run):
    (out, _), catalog = icp_run
    rows = Catalog(str(catalog)).query("SELECT stage, name, value FROM metrics")[1]
    m = {(s, n): v for s, n, v in rows}
    assert m[("icp_dedup", "removed_as_duplicates")] >= 1
    assert 0 <= m[("icp_order", "jump_share")] < 0.2
    # The bar: at least twice the random order's mean adjacent similarity.
    assert m[("icp_order", "adjacent_similarity")] >= 2 * m[("icp_order", "adjacent_similarity_random")]
    assert m[("icp_order", "adjacent_similarity_ratio")] >= 2
    assert m[("icp_order", "adjacent_similarity_centred")] >= 2 * m[
        ("icp_order", "adjacent_similarity_centred_random")]
    assert m[("icp_pack", "context_similarity")] > m[("icp_pack", "context_similarity_random")]
    png = out / "plots" / "icp_adjacent_similarity.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lineage_chains_the_artifacts(icp_run):
    (out, _), catalog = icp_run
    rows = Catalog(str(catalog)).query(
        "SELECT p.name, c.name FROM lineage l JOIN artifacts p ON p.artifact_id = l.parent_artifact_id "
        "JOIN artifacts c ON c.artifact_id = l.child_artifact_id "
        "WHERE l.run_id = (SELECT min(run_id) FROM runs)")[1]
    # Every stage runs on the records (no whole-dataset step, so no documents artifact): the contexts
    # and the global stages' answers (neighbours, dedup, order) all come from the three inputs.
    children = ["icp", "icp:dedup", "icp:knn", "icp:order"]
    assert sorted(rows) == sorted((corpus, c) for corpus in ("kjv_chapters", "paul_graham", "python_docs")
                                  for c in children)


def test_same_seed_same_bytes(icp_run):
    (first, second), catalog = icp_run
    for sub in ("data", "order/data", "dedup/data", "knn/data", "plots"):
        a = sorted((first / sub).iterdir())
        b = sorted((second / sub).iterdir())
        assert [p.name for p in a] == [p.name for p in b]
        assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b], sub
    fps = Catalog(str(catalog)).query("SELECT fingerprint FROM artifacts WHERE name = 'icp'")[1]
    assert len(fps) == 2 and fps[0] == fps[1]
    card = json.loads((first / ".longforge" / "run.json").read_text())
    assert card["schema"] == "icp_context@1"


def test_beam_ivf_knn_with_two_workers_matches_exact_search(normalised, tmp_path):
    """The Beam path (sampled quantizer, cells assigned and searched in parallel, top-k merged)."""
    from stages.icp.beam_knn import beam_knn

    docs, plan = normalised
    embed = next(ps.stage for ps in plan.stages if ps.name == "icp_embed")
    embed.setup()
    records = [docs[i] for i in sorted(docs)][:400]
    emb = np.stack([o[0]["emb"] for o in embed.process_batch(records)]).astype(np.float32)
    ids, sims = beam_knn(emb, tmp_path, k=10, nlist=16, nprobe=4, train_size=100_000, seed=0, workers=2)
    exact_ids, _ = core.knn(emb, core.KnnSettings(k=10))
    assert core.recall_at(exact_ids, ids, 10) >= 0.9
    rows = np.arange(len(emb))
    assert not (ids == rows[:, None]).any()  # never itself
    valid = ids >= 0
    assert valid.all(axis=1).mean() > 0.99
    assert (np.diff(np.where(valid, sims, -np.inf), axis=1) <= 1e-6).all()  # most similar first
    again, _ = beam_knn(emb, tmp_path / "again", k=10, nlist=16, nprobe=4, train_size=100_000, seed=0, workers=2)
    assert (again == ids).all()  # deterministic whatever the workers' order
