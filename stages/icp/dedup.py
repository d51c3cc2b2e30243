"""ICP's semantic dedup over the union graph (spec 3.2): of two documents above the similarity
threshold, the one met later goes."""

from __future__ import annotations

import numpy as np

from stages.icp.graph import Graph, njit

# -- semantic dedup ------------------------------------------------------------------------------


def semantic_dedup(graph: Graph, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Visit documents in index order; drop one whose similarity to an earlier kept neighbour is at
    least ``threshold``. Afterwards no kept pair of neighbours reaches the threshold.
    Returns keep[bool], dup_of[int64, -1], dup_sim[float32, NaN]."""
    return _semantic_dedup(graph.indptr, graph.indices, graph.weights, np.float32(threshold))


@njit(cache=True)
def _semantic_dedup(indptr, indices, weights, threshold):
    n = len(indptr) - 1
    keep = np.ones(n, dtype=np.bool_)
    dup_of = np.full(n, -1, dtype=np.int64)
    dup_sim = np.full(n, np.nan, dtype=np.float32)
    for u in range(n):
        best = -1
        best_w = np.float32(-2.0)
        for j in range(indptr[u], indptr[u + 1]):
            v = indices[j]
            w = weights[j]
            if v < u and keep[v] and w >= threshold and (w > best_w or (w == best_w and v < best)):
                best = v
                best_w = w
        if best >= 0:
            keep[u] = False
            dup_of[u] = best
            dup_sim[u] = best_w
    return keep, dup_of, dup_sim
