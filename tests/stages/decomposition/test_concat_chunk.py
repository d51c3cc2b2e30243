"""The concat-and-chunk baseline and its best-fit-decreasing packed variant, from the same tokens."""

from __future__ import annotations

import pytest

from stages import get_stage
from tests.conftest import read_as_stream


@pytest.fixture(scope="module")
def tokenised(real_docs):
    stage = get_stage("tokenize_ids")()
    stage.setup()
    docs = [d for d in real_docs if d["source"] in ("paul_graham", "python_docs")]
    # The stage gives int32 arrays; the tests compare plain lists.
    return [{**o[0], "input_ids": o[0]["input_ids"].tolist()} for o in stage.process_batch(docs)]


def _run(docs, **params):
    """As the engine runs a group: its records sorted by the place group_of gives them."""
    cls = get_stage("concat_chunk")
    stage = cls(cls.Params(**params), seed=0)
    records = sorted(({"id": d["id"], "text": d["text"], "input_ids": d["input_ids"]} for d in docs),
                     key=lambda r: stage.group_of(r)[1])
    metrics: dict = {}
    outcomes = list(stage.build("00000", records, metrics))
    return [o for o in outcomes if isinstance(o, dict)], stage.summarize_metrics(metrics), records


def test_concat_is_the_shuffled_stream_cut_at_L(tokenised):
    rows, m, records = _run(tokenised, context_length=2048)
    assert [r["id"] for r in records] != sorted(r["id"] for r in records)  # shuffled by a seeded hash
    stream = [t for r in records for t in r["input_ids"]]
    flat = [t for r in rows for t in r["input_ids"]]
    assert all(len(r["input_ids"]) == 2048 for r in rows) and flat == stream[: len(flat)]
    assert len(stream) - len(flat) < 2048
    assert 0 < m["cross_document_attention_share"] < 1 and m["padding_share"] == 0


def test_best_fit_decreasing_keeps_every_token_once(tokenised):
    rows, m, _ = _run(tokenised, context_length=2048, packing="best_fit_decreasing", document_mask=True)
    by_doc = {d["id"]: d["input_ids"] for d in tokenised}
    got: dict[str, dict[int, list]] = {}
    for r in rows:
        assert len(r["input_ids"]) == 2048
        for k, s in enumerate(r["spans"]):
            piece = r["input_ids"][s["start"]:s["end"]]
            got.setdefault(s["doc_id"], {})[s["doc_tok_offset"]] = piece
            assert set(r["segment_ids"][s["start"]:s["end"]]) == {k + 1}
    for doc_id, toks in by_doc.items():
        rebuilt = [t for off in sorted(got[doc_id]) for t in got[doc_id][off]]
        assert rebuilt == toks
    assert m["cross_document_attention_share"] == 0 and m["dropped_token_share"] == 0
    # Packing wastes little: fewer contexts than twice the lower bound.
    assert len(rows) < 2 * (sum(len(t) for t in by_doc.values()) / 2048 + 1)


def test_concat_reads_its_group_as_a_stream(tokenised):
    """Each context is given as soon as it is full: when the first comes out, the stage has read
    no more documents than that context holds, plus the one that filled it."""
    cls = get_stage("concat_chunk")
    stage = cls(cls.Params(context_length=512), seed=0)
    records = sorted(({"id": d["id"], "input_ids": d["input_ids"]} for d in tokenised),
                     key=lambda r: stage.group_of(r)[1])
    read: list[str] = []
    outcomes = stage.build("00000", read_as_stream(records, read), {})
    first = next(outcomes)
    assert len(read) == len({s["doc_id"] for s in first["spans"]})
    rest = list(outcomes)
    assert len(read) == len(records) and rest  # and then the rest, once


def test_best_fit_spills_its_group_and_leaves_nothing_behind(tokenised, tmp_path, monkeypatch):
    """best_fit_decreasing sorts every piece first: the stage reads its stream once into a spill,
    gives the same contexts as the packer over the documents in hand, and removes the spill."""
    import tempfile

    import numpy as np

    from stages.decomposition.concat_chunk import best_fit_decreasing

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rows, _, records = _run(tokenised, context_length=1024, packing="best_fit_decreasing")
    assert list(tmp_path.iterdir()) == []
    tokens = [np.asarray(r["input_ids"], dtype=np.int32) for r in records]
    want = list(best_fit_decreasing(np.array([len(t) for t in tokens]), lambda d, o, n: tokens[d][o:o + n], 1024, 0))
    assert [r["input_ids"].tolist() for r in rows] == [ids.tolist() for ids, _ in want]
    assert [[(s["doc_id"], s["start"], s["end"]) for s in r["spans"]] for r in rows] == \
        [[(records[d]["id"], a, b) for d, a, b, _ in spans] for _, spans in want]
