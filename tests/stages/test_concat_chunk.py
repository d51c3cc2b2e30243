"""The concat-and-chunk baseline and its best-fit-decreasing packed variant, from the same tokens."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from stages import get_stage
from stages.base import DatasetContext


@pytest.fixture(scope="module")
def tokenised(real_docs):
    stage = get_stage("tokenize_ids")()
    stage.setup()
    docs = [d for d in real_docs if d["source"] in ("paul_graham", "python_docs")]
    # The stage gives int32 arrays; the tests compare plain lists.
    return [{**o[0], "input_ids": o[0]["input_ids"].tolist()} for o in stage.process_batch(docs)]


def _run(docs, **params):
    cls = get_stage("concat_chunk")
    ctx = DatasetContext(table=pa.Table.from_pylist([{"id": d["id"], "text": d["text"],
                                                      "input_ids": d["input_ids"]} for d in docs]))
    result = cls(cls.Params(**params), seed=0).run(ctx)
    return result, ctx.metrics["concat_chunk"]


def test_concat_is_the_shuffled_stream_cut_at_L(tokenised):
    result, m = _run(tokenised, context_length=2048)
    rows = result.table.to_pylist()
    order = np.random.default_rng(0).permutation(len(tokenised))
    stream = [t for i in order for t in tokenised[i]["input_ids"]]
    flat = [t for r in rows for t in r["input_ids"]]
    assert all(len(r["input_ids"]) == 2048 for r in rows) and flat == stream[: len(flat)]
    assert len(stream) - len(flat) < 2048
    assert 0 < m["cross_document_attention_share"] < 1 and m["padding_share"] == 0


def test_best_fit_decreasing_keeps_every_token_once(tokenised):
    result, m = _run(tokenised, context_length=2048, packing="best_fit_decreasing", document_mask=True)
    rows = result.table.to_pylist()
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
