"""ICP stages as the engine calls them: the reference code's 3-gram check and its record in the
dedup artifact, and the pack stage's spans."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from stages import get_stage
from stages.base import GlobalContext


def _stage(name, **params):
    cls = get_stage(name)
    return cls(cls.Params(**params), seed=0)


def test_ngram_check_after_ordering_is_recorded_as_ngram_dedup(real_docs):
    """The global stages as the engine calls them: kNN, dedup and order each decide over the summaries."""
    essays = [d["text"] for d in real_docs if d["source"] == "paul_graham"][:6]
    texts = essays + [essays[2][:100] + " and then a different ending entirely."]
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(texts), 8)).astype(np.float32)
    emb[6] = emb[2] + 0.2 * rng.normal(size=8)  # the copy is the original's nearest neighbour (not a
    # semantic duplicate at the threshold below): the walk puts them side by side
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [f"d{i:02d}" for i in range(len(texts))]
    ctx = GlobalContext()
    knn = _stage("icp_knn", k=3).decide(pa.table({"id": ids, "emb": emb.tolist()}), ctx)
    records = pa.table({"id": ids, "nbr_ids": knn.columns["nbr_ids"], "nbr_sims": knn.columns["nbr_sims"],
                        "emb": emb.tolist(), "head": [t[:100] for t in texts]})
    assert not _stage("icp_dedup", threshold=0.999).decide(records.select(["id", "nbr_ids", "nbr_sims"]), ctx).dropped
    result = _stage("icp_order", ngram_check=True).decide(records, ctx)
    # Whichever of the pair the walk reaches second is dropped, naming the other.
    assert len(result.dropped) == 1
    (row, drop), = result.dropped.items()
    assert drop.record_id == ids[row] and drop.record_id in ("d02", "d06")
    other = {"d02", "d06"} - {drop.record_id}
    assert drop.reason == "3-gram duplicate of previous"
    (noted,) = result.artifacts["dedup_ngram"].to_pylist()
    assert noted["id"] == drop.record_id and noted["dup_method"] == "ngram" and {noted["dup_of"]} == other
    assert not noted["keep"]
    pos = result.columns["pos"]
    assert pos[row] is None and sorted(p for p in pos if p is not None) == list(range(6))
    assert result.artifacts["order"].column("pos").to_pylist() == list(range(6))


def test_pack_spans_point_at_the_document_tokens(real_docs):
    from gpu_jobs.models import load_tokenizer

    docs = [d["text"] for d in real_docs if d["source"] == "kjv"][:20]
    stage = _stage("icp_pack", context_length=512, shuffle=False)
    stage.setup()
    records = [{"id": f"d{i:02d}", "text": t, "pos": i, "emb": np.eye(20)[i].tolist()} for i, t in enumerate(docs)]
    metrics: dict = {}
    rows = [o for o in stage.build("all", records, metrics) if isinstance(o, dict)]
    tok = load_tokenizer("smollm2")
    for row in rows:
        for span in row["spans"]:
            doc = docs[int(span["doc_id"][1:])]
            ids = tok.encode(doc, add_special_tokens=False).ids + [tok.token_to_id("<|endoftext|>")]
            piece = list(row["input_ids"][span["start"]:span["end"]])
            assert piece == ids[span["doc_tok_offset"]:span["doc_tok_offset"] + len(piece)]
    assert [r["ctx_index"] for r in rows] == list(range(len(rows)))
    assert metrics["contexts"] == len(rows) and metrics["similarity_n"] > 0


def test_pack_spills_its_contexts_and_gives_them_in_the_shuffled_order(real_docs, tmp_path, monkeypatch):
    """The stage reads its group once and spills the contexts: the records are the whole order's
    packing (core.pack over every document at once) in the seeded permutation's order, the
    similarity sums are those of the whole packing, and the scratch files are gone afterwards."""
    import tempfile

    from gpu_jobs.models import load_tokenizer
    from stages.icp import core

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    docs = [d["text"] for d in real_docs if d["source"] == "kjv"][:30]
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(len(docs), 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    stage = _stage("icp_pack", context_length=256)
    stage.setup()
    consumed = []

    def stream():
        for i, t in enumerate(docs):
            consumed.append(i)
            yield {"id": f"d{i:02d}", "text": t, "pos": i, "emb": emb[i].tolist()}

    metrics: dict = {}
    out = list(stage.build("all", stream(), metrics))
    assert consumed == list(range(len(docs)))  # one pass
    assert list(tmp_path.iterdir()) == []  # the scratch directory removed
    tok = load_tokenizer("smollm2")
    eos = tok.token_to_id("<|endoftext|>")
    tokens = [np.asarray(tok.encode(t, add_special_tokens=False).ids, dtype=np.int32) for t in docs]
    whole = core.pack(np.arange(len(docs)), tokens, 256, eos, True, pad_id=eos)
    n = len(whole.input_ids)
    positions = np.random.default_rng(0).permutation(n)  # the stage's seed is 0
    rows = [o for o in out if isinstance(o, dict)]
    assert [r["ctx_index"] for r in rows] == sorted(range(n), key=lambda c: positions[c])
    for r in rows:
        c = r["ctx_index"]
        assert r["id"] == f"ctx-{positions[c]:08d}"
        assert r["input_ids"].tolist() == whole.input_ids[c].tolist()
        assert [(s["doc_id"], s["start"], s["end"], s["doc_tok_offset"]) for s in r["spans"]] == \
            [(f"d{s['doc']:02d}", s["start"], s["end"], s["doc_tok_offset"]) for s in whole.spans[c]]
    dropped = [o.record_id for o in out if type(o).__name__ == "Dropped"]
    assert dropped == [f"d{d:02d}" for d in whole.docs_in_tail.tolist()]
    own = core.context_similarity(emb, whole.spans)
    assert metrics["similarity_sum"] / metrics["similarity_n"] == pytest.approx(own, rel=1e-6)
    control = core.pack(np.random.default_rng(1).permutation(len(docs)), tokens, 256, eos, True)
    assert metrics["similarity_random_sum"] / metrics["similarity_random_n"] == pytest.approx(
        core.context_similarity(emb, control.spans), rel=1e-6)
