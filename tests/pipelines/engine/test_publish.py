"""Record digests (the fingerprint's parts): numeric lists are hashed by their values, and a null
element is told apart from every number (a plan step without a word target is not a 0-word step)."""

from __future__ import annotations

import warnings

import pyarrow as pa

from pipelines.engine.publish import batch_digests


def test_null_list_elements_differ_from_every_value_and_are_hashed_without_a_cast():
    batch = pa.RecordBatch.from_pydict({
        "id": ["a", "b", "c", "d", "e"],
        "word_targets": pa.array([[300, None], [300, 0], [300, None], None, [300, -2**63]], pa.list_(pa.int64())),
    })
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN cast to an integer warns: it must not happen
        d = batch_digests(batch)
    same_id = batch_digests(pa.RecordBatch.from_pydict({"id": ["a"] * 5, "word_targets": batch.column(1)}))
    assert len(set(same_id)) == 4 and same_id[0] == same_id[2]  # [300, None] twice; the rest all differ
    assert len(set(d)) == 5
    plain = pa.RecordBatch.from_pydict({"id": ["a"], "word_targets": pa.array([[300, 0]], pa.list_(pa.int64()))})
    # a row without nulls hashes as before, whatever else is in its batch (digests never depend on batching)
    assert batch_digests(plain)[0] == same_id[1]
