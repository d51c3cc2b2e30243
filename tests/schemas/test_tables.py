"""The fast row operations give exactly what Arrow's own take and sort give."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from schemas import TOKEN_IDS_RECORD, cast_table
from schemas.tables import sort_by_id, take_rows


def _table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 50, n)
    return pa.table({
        "id": [f"doc-{k:04d}" for k in rng.permutation(n)],
        "input_ids": pa.array([rng.integers(0, 50_000, m).astype(np.int32) for m in lengths], pa.list_(pa.int32())),
        "emb": pa.array([rng.random(3).astype(np.float32) for _ in range(n)], pa.list_(pa.float32())),
        "note": [None if k % 3 else str(k) for k in range(n)],
        "words": pa.array([None if k % 4 == 0 else [str(k)] for k in range(n)], pa.list_(pa.string())),
    })


def test_take_rows_equals_arrow_take_with_repeats_and_chunks():
    t = pa.concat_tables([_table(300, 1), _table(200, 2)])  # two chunks per column
    idx = np.random.default_rng(3).integers(0, t.num_rows, 700)
    assert take_rows(t, idx).equals(t.take(pa.array(idx)))
    assert take_rows(t, np.zeros(0, dtype=np.int64)).equals(t.take(pa.array([], pa.int64())))


def test_take_rows_keeps_null_lists():
    t = pa.table({"id": ["a", "b"], "x": pa.array([None, [1]], pa.list_(pa.int32()))})
    assert take_rows(t, [1, 0]).to_pylist() == [{"id": "b", "x": [1]}, {"id": "a", "x": None}]


def test_sort_by_id_equals_arrow_sort():
    t = _table(500, 4)
    assert sort_by_id(t).equals(t.sort_by([("id", "ascending")]))
    ordered = t.sort_by([("id", "ascending")])
    assert sort_by_id(ordered) is ordered  # already sorted: returned as it is


def test_cast_table_takes_numpy_token_arrays_as_lists_would_be():
    rng = np.random.default_rng(5)
    arrays = [rng.integers(0, 1000, m).astype(np.int32) for m in (0, 3, 7)]
    with_np = cast_table([{"id": str(k), "input_ids": a, "n_tokens": len(a)} for k, a in enumerate(arrays)],
                         TOKEN_IDS_RECORD.arrow)
    with_lists = cast_table([{"id": str(k), "input_ids": a.tolist(), "n_tokens": len(a)}
                             for k, a in enumerate(arrays)], TOKEN_IDS_RECORD.arrow)
    assert with_np.equals(with_lists)
