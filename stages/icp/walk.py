"""ICP's greedy traversal of the union graph: documents in order, runs, jumps (spec 3.4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stages.icp.graph import Graph

try:  # numba makes the sequential walk fast; the pure-Python fallback gives the same answer
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a declared dependency
    def njit(*args, **kwargs):
        return args[0] if args and callable(args[0]) else (lambda f: f)

    prange = range


# -- the greedy traversal ------------------------------------------------------------------------


@dataclass(frozen=True)
class WalkSettings:
    seed: int = 0
    start: str = "min_degree"  # min_degree [paper] | first_unvisited [code: set.pop()]
    max_run_len: int = 0  # 0: unbounded [paper]; 21 [code]
    merge_short_runs: bool = False  # [code]
    merge_top: int = 9  # [code] neighbours looked at when merging a short run


@dataclass
class Walk:
    order: np.ndarray  # int64[n]: node visited at each position
    run: np.ndarray  # int64[n]: greedy run of each position
    via_jump: np.ndarray  # bool[n]: position reached by a jump (run start after the first)
    sim_prev: np.ndarray  # float32[n]: edge weight from the previous position (NaN after a jump)


def start_order(degree: np.ndarray, seed: int, start: str) -> np.ndarray:
    """The order in which run starts are tried: by static degree, ties in a seeded random order
    (a stable counting sort by degree of the nodes in that order: O(N), where a lexsort took
    3 s at 10M documents)."""
    n = len(degree)
    dtype = np.int32 if n < 2**31 else np.int64  # the walk holds it: the narrowest that fits
    if start == "first_unvisited":
        return np.arange(n, dtype=dtype)
    tiebreak = np.random.default_rng(seed).permutation(n)
    by_tiebreak = np.empty(n, dtype=dtype)
    by_tiebreak[tiebreak] = np.arange(n, dtype=dtype)
    return _stable_by_degree(np.ascontiguousarray(degree, dtype=np.int64), by_tiebreak)


@njit(cache=True)
def _stable_by_degree(degree, nodes):
    n = len(nodes)
    top = 0
    for u in range(n):
        top = max(top, degree[u])
    first = np.zeros(top + 2, dtype=np.int64)
    for u in range(n):
        first[degree[u] + 1] += 1
    for d in range(top + 1):
        first[d + 1] += first[d]
    out = np.empty(n, dtype=nodes.dtype)
    for t in range(n):
        u = nodes[t]
        out[first[degree[u]]] = u
        first[degree[u]] += 1
    return out


def greedy_walk(graph: Graph, s: WalkSettings = WalkSettings()) -> Walk:
    """The paper's Algorithm 1 (max weight, the text's intent; the pseudo-code's argmin is a typo)."""
    starts = start_order(graph.degree(), s.seed, s.start)
    order, run, jump, sim = _walk(graph.indptr, graph.indices, graph.weights, starts, s.max_run_len)
    walk = Walk(order, run, jump, sim)
    if s.merge_short_runs:
        walk = merge_short_runs(walk, graph, s)
    return walk


@njit(cache=True, inline="always")
def _is_set(bitset, v):
    return (bitset[v >> 6] >> np.uint64(v & 63)) & np.uint64(1)


@njit(cache=True)
def _walk(indptr, indices, weights, starts, max_run_len):
    n = len(indptr) - 1
    # A bitset, not a bool per node: 1.25 MB at 10M documents stays in cache for the random checks.
    visited = np.zeros((n >> 6) + 1, dtype=np.uint64)
    order = np.empty(n, dtype=np.int64)
    run = np.empty(n, dtype=np.int64)
    jump = np.zeros(n, dtype=np.bool_)
    sim = np.full(n, np.nan, dtype=np.float32)
    # Per node, the first neighbour slot not yet known to be visited (each slot is passed once),
    # beside the row's end: the walk chases pointers, and one cache line holds both.
    cursor = np.empty((n, 2), dtype=np.int64)
    cursor[:, 0] = indptr[:-1]
    cursor[:, 1] = indptr[1:]
    next_start = 0
    pos = 0
    r = -1
    while pos < n:
        while _is_set(visited, starts[next_start]):
            next_start += 1
        u = starts[next_start]
        r += 1
        visited[u >> 6] |= np.uint64(1) << np.uint64(u & 63)
        order[pos] = u
        run[pos] = r
        jump[pos] = pos > 0
        pos += 1
        length = 1
        while True:
            if max_run_len > 0 and length >= max_run_len:
                break
            j = cursor[u, 0]
            end = cursor[u, 1]
            while j < end and _is_set(visited, indices[j]):
                j += 1
            cursor[u, 0] = j
            if j == end:
                break
            v = indices[j]  # rows are sorted by weight desc: the first unvisited is the most similar
            visited[v >> 6] |= np.uint64(1) << np.uint64(v & 63)
            order[pos] = v
            run[pos] = r
            sim[pos] = weights[j]
            pos += 1
            length += 1
            u = v
    return order, run, jump, sim


def merge_short_runs(walk: Walk, graph: Graph, s: WalkSettings) -> Walk:
    """[code] Every run shorter than ``max_run_len`` (21 if unset) moves to just before the first of
    its first document's top ``merge_top`` neighbours that lies in another run."""
    cap = s.max_run_len or 21
    runs: list[list[int]] = []
    for node, r in zip(walk.order.tolist(), walk.run.tolist(), strict=True):
        if r == len(runs):
            runs.append([])
        runs[-1].append(node)
    run_of = np.empty(graph.n, dtype=np.int64)
    for r, nodes in enumerate(runs):
        run_of[nodes] = r
    # Linked list of nodes: insert_before[target] = runs to splice right before target.
    insert_before: dict[int, list[int]] = {}
    moved = set()
    for r, nodes in enumerate(runs):
        if len(nodes) >= cap:
            continue
        nbrs, _ = graph.neighbours(nodes[0])
        target = next((int(v) for v in nbrs[: s.merge_top] if run_of[v] != r and run_of[v] not in moved), None)
        if target is not None:
            insert_before.setdefault(target, []).append(r)
            moved.add(r)

    out: list[int] = []

    def emit(node: int, seen: set) -> None:
        for r in insert_before.get(node, []):
            if r not in seen:
                seen.add(r)
                for x in runs[r]:
                    emit(x, seen)
        out.append(node)

    seen: set = set()
    for r, nodes in enumerate(runs):
        if r in moved:
            continue
        for node in nodes:
            emit(node, seen)
    for r in sorted(moved - seen):  # a cycle of moves: keep those runs where they were, at the end
        for node in runs[r]:
            emit(node, seen)
    order = np.array(out, dtype=np.int64)
    return relabel_runs(order, graph)


def relabel_runs(order: np.ndarray, graph: Graph) -> Walk:
    """Runs, jumps and edge weights of an order, as read off the graph."""
    n = len(order)
    run = np.empty(n, dtype=np.int64)
    jump = np.zeros(n, dtype=bool)
    sim = np.full(n, np.nan, dtype=np.float32)
    r = 0
    for i in range(n):
        if i > 0:
            nbrs, ws = graph.neighbours(order[i - 1])
            hit = np.nonzero(nbrs == order[i])[0]
            if len(hit):
                sim[i] = ws[hit[0]]
            else:
                r += 1
                jump[i] = True
        run[i] = r
    return Walk(order, run, jump, sim)


def greedy_walk_python(adj: dict[int, dict[int, float]], seed: int = 0) -> list[int]:
    """Algorithm 1 as a researcher would write it over Python sets: the benchmark's anchor and
    the test's reference. ``adj[u][v]`` is the weight of edge u-v."""
    degree = np.array([len(adj[u]) for u in range(len(adj))])
    starts = start_order(degree, seed, "min_degree").tolist()
    unvisited = set(adj)
    path: list[int] = []
    si = 0
    while unvisited:
        while starts[si] not in unvisited:
            si += 1
        u = starts[si]
        unvisited.remove(u)
        path.append(u)
        while True:
            cands = [(w, -v) for v, w in adj[u].items() if v in unvisited]
            if not cands:
                break
            _, neg_v = max(cands)
            u = -neg_v
            unvisited.remove(u)
            path.append(u)
    return path
