"""The union graph's build (issue 19): the chunked, in-place build gives exactly the graph of the
previous implementation (kept here, verbatim but for its name, as the oracle: ``_old_union_csr``
from commit 752e5a2) on random kNN lists with every irregularity the lists can have, from arrays
and from ``.npy`` files read chunk by chunk. The pipeline's real kNN lists are checked in
tests/pipelines/test_icp_pipeline.py."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from stages.icp import core


@njit(cache=True)
def _old_union_csr(ids, sims, keep, directed):
    n, k = ids.shape
    # Two passes (count, then fill) with the same edge test written out in each: a shared helper
    # measured 40 % slower here (3.3 s -> 4.7 s at 1M nodes).
    counts = np.zeros(n + 1, dtype=np.int64)
    for u in range(n):
        if not keep[u]:
            continue
        for j in range(k):
            v = ids[u, j]
            if v < 0 or v == u or not keep[v] or sims[u, j] != sims[u, j]:
                continue
            counts[u + 1] += 1
            if not directed:
                counts[v + 1] += 1
    raw_ptr = np.cumsum(counts)
    raw_idx = np.empty(raw_ptr[-1], dtype=np.int32)  # int32 halves the edge arrays (n < 2^31)
    raw_w = np.empty(raw_ptr[-1], dtype=np.float32)
    fill = raw_ptr[:-1].copy()
    for u in range(n):
        if not keep[u]:
            continue
        for j in range(k):
            v = ids[u, j]
            if v < 0 or v == u or not keep[v] or sims[u, j] != sims[u, j]:
                continue
            raw_idx[fill[u]] = np.int32(v)
            raw_w[fill[u]] = sims[u, j]
            fill[u] += 1
            if not directed:
                raw_idx[fill[v]] = np.int32(u)
                raw_w[fill[v]] = sims[u, j]
                fill[v] += 1
    # Per row, with row-local sorts only (no random access into node-sized arrays): sort packed
    # (id, weight desc) keys to merge duplicate neighbours keeping the heavier edge, then sort packed
    # (weight desc, id) keys for the final order.
    indptr = np.zeros(n + 1, dtype=np.int64)
    indices = np.empty(raw_ptr[-1], dtype=np.int32)
    weights = np.empty(raw_ptr[-1], dtype=np.float32)
    width = counts.max() if n else 0
    by_id = np.empty(width, dtype=np.uint64)
    by_w = np.empty(width, dtype=np.uint64)
    bits = raw_w.view(np.uint32)
    wview = weights.view(np.uint32)
    mask32 = np.uint64(0xFFFFFFFF)
    at = 0
    for u in range(n):
        a, b = raw_ptr[u], raw_ptr[u + 1]
        for t in range(a, b):
            dk = core._desc_key(bits[t], 0) >> np.uint64(32)
            by_id[t - a] = (np.uint64(raw_idx[t]) << np.uint64(32)) | dk
        row = np.sort(by_id[: b - a])
        m = 0
        last = np.uint64(0xFFFFFFFFFFFFFFFF)
        for j in range(b - a):
            v = row[j] >> np.uint64(32)
            if v != last:
                by_w[m] = ((row[j] & mask32) << np.uint64(32)) | v
                m += 1
                last = v
        keys = np.sort(by_w[:m])
        for j in range(m):
            indices[at + j] = np.int32(keys[j] & mask32)
            wview[at + j] = np.uint32(core._bits_of(keys[j]))
        at += m
        indptr[u + 1] = at
    return indptr, indices, weights, at


def old_union_graph(ids, sims, keep=None, directed=False, use_top=None) -> core.Graph:
    n = len(ids)
    ids = ids if use_top is None else ids[:, :use_top]
    sims = sims if use_top is None else sims[:, :use_top]
    keep_arr = np.ones(n, dtype=np.bool_) if keep is None else keep.astype(np.bool_)
    indptr, indices, weights, nnz = _old_union_csr(np.ascontiguousarray(ids, dtype=np.int64),
                                                   np.ascontiguousarray(sims, dtype=np.float32), keep_arr, directed)
    return core.Graph(indptr, indices[:nnz], weights[:nnz])


def assert_same(a: core.Graph, b: core.Graph) -> None:
    assert np.array_equal(a.indptr, b.indptr)
    assert np.array_equal(a.indices, b.indices)
    assert np.array_equal(a.weights.view(np.uint32), b.weights.view(np.uint32))  # bit for bit
    assert a.indices.dtype == np.int32 and a.weights.dtype == np.float32


def irregular_knn(n: int, k: int, seed: int):
    """Random lists with missing results (-1), NaN similarities, self matches, repeated
    neighbours, mutual pairs with different weights, equal weights (ties), negative ones, a hub."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, n, size=(n, k), dtype=np.int64)
    sims = np.round(rng.uniform(-0.2, 1.0, size=(n, k)), 2).astype(np.float32)  # rounding makes ties
    sims = -np.sort(-sims, axis=1)
    ids[rng.random((n, k)) < 0.05] = -1
    sims[rng.random((n, k)) < 0.03] = np.nan
    rows = rng.integers(0, n, size=n // 10)
    ids[rows, 0] = rows  # self matches
    if k > 1:
        ids[rows, -1] = ids[rows, 1]  # repeats
    if k > 2:  # a hub: a third of the documents list document 0, so its row is long (the library sort)
        ids[rng.integers(0, n, size=n // 3), 2] = 0
    return ids, sims


@pytest.mark.parametrize("n,k,seed", [(1, 3, 0), (2, 1, 1), (40, 1, 5), (50, 5, 2), (700, 12, 3), (5000, 20, 4)])
def test_same_graph_as_before_on_random_lists(n, k, seed):
    ids, sims = irregular_knn(n, k, seed)
    assert_same(core.union_graph(ids, sims, chunk_rows=97), old_union_graph(ids, sims))
    keep = np.random.default_rng(seed).random(n) > 0.2
    assert_same(core.union_graph(ids, sims, keep=keep, chunk_rows=13), old_union_graph(ids, sims, keep=keep))
    assert_same(core.union_graph(ids, sims, directed=True, use_top=max(1, k // 2)),
                old_union_graph(ids, sims, directed=True, use_top=max(1, k // 2)))
    assert_same(core.union_graph(ids.astype(np.int32), sims), old_union_graph(ids, sims))  # narrow ids
    # many fill batches per chunk and many destination blocks: the bucketed fill's edge cases
    assert_same(core.union_graph(ids, sims, keep=keep, chunk_rows=29, batch_rows=7, block_rows_log2=2),
                old_union_graph(ids, sims, keep=keep))
    # rows split among threads (ranges that start mid-block, more threads than rows for tiny n)
    for threads in (2, 3):
        assert_same(core.union_graph(ids, sims, keep=keep, chunk_rows=31, batch_rows=5, block_rows_log2=3,
                                     threads=threads), old_union_graph(ids, sims, keep=keep))
        assert_same(core.union_graph(ids, sims, directed=True, use_top=max(1, k // 2), threads=threads),
                    old_union_graph(ids, sims, directed=True, use_top=max(1, k // 2)))


@pytest.mark.parametrize("n,seed", [(1, 0), (9, 1), (5000, 2)])
def test_start_order_is_the_degree_lexsort(n, seed):
    """The O(N) start order is the paper's: degree ascending, ties in a seeded random order."""
    degree = np.random.default_rng(seed).integers(0, 6, size=n)
    degree[: n // 50] = 4000  # a few hubs
    tiebreak = np.random.default_rng(seed + 10).permutation(n)
    expected = np.lexsort((tiebreak, degree))
    assert np.array_equal(core.start_order(degree, seed + 10, "min_degree"), expected)


def test_lists_read_from_npy_files_chunk_by_chunk(tmp_path):
    ids, sims = irregular_knn(3000, 16, 7)
    np.save(tmp_path / "ids.npy", ids.astype(np.int32))
    np.save(tmp_path / "sims.npy", sims)
    lists = core.KnnLists(str(tmp_path / "ids.npy"), str(tmp_path / "sims.npy"))
    assert (lists.n, lists.k) == (3000, 16)
    assert_same(core.union_graph(lists, None, chunk_rows=256), old_union_graph(ids, sims))
    truncated = tmp_path / "truncated.npy"
    truncated.write_bytes((tmp_path / "sims.npy").read_bytes()[:-100])
    with pytest.raises(ValueError, match="ends early"):
        core.union_graph(core.KnnLists(str(tmp_path / "ids.npy"), str(truncated)), None)
    np.save(tmp_path / "short.npy", sims[:10])
    with pytest.raises(ValueError, match="disagree"):
        core.KnnLists(str(tmp_path / "ids.npy"), str(tmp_path / "short.npy"))
