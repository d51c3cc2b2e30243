"""In-Context Pretraining on arrays: kNN, semantic dedup, the union graph, the greedy traversal,
packing into contexts, and the quality metrics (spec: ../shared/specs/icp.md).

Everything here is plain numpy (plus faiss for the search and numba for the walk), O(N*k) in time
and memory, with documents addressed by their row index 0..N-1; the stages map indexes to ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:  # numba makes the sequential walk fast; the pure-Python fallback gives the same answer
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a declared dependency
    def njit(*args, **kwargs):
        return args[0] if args and callable(args[0]) else (lambda f: f)

    prange = range


# -- kNN ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnnSettings:
    k: int = 50
    index: str = "flat"  # flat | ivf | ivfpq | hnsw
    nlist: int = 1024
    nprobe: int = 64
    pq_bytes: int = 32
    hnsw_m: int = 32
    ef_search: int = 128
    train_size: int = 100_000
    seed: int = 0
    threads: int = 0  # 0: faiss's default


def build_index(emb: np.ndarray, s: KnnSettings):
    """A faiss inner-product index over L2-normalised vectors (inner product == cosine)."""
    import faiss

    if s.threads:
        faiss.omp_set_num_threads(s.threads)
    n, d = emb.shape
    if s.index == "flat":
        index = faiss.IndexFlatIP(d)
    elif s.index == "hnsw":
        index = faiss.IndexHNSWFlat(d, s.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = s.ef_search
    else:
        nlist = max(1, min(s.nlist, n // 39 or 1))  # faiss wants >= 39 training points per list
        quantizer = faiss.IndexFlatIP(d)
        if s.index == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        elif s.index == "ivfpq":
            m = s.pq_bytes
            while d % m:
                m -= 1
            index = faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        else:
            raise ValueError(f"unknown index '{s.index}' (flat, ivf, ivfpq, hnsw)")
        rng = np.random.default_rng(s.seed)
        train = emb if n <= s.train_size else emb[np.sort(rng.choice(n, s.train_size, replace=False))]
        index.train(np.ascontiguousarray(train))
        index.nprobe = min(s.nprobe, nlist)
    index.add(np.ascontiguousarray(emb))
    return index


def clean_neighbours(query_rows: np.ndarray, ids: np.ndarray, sims: np.ndarray, k: int):
    """Drop self (by id, not position: under PQ self may not rank first) and faiss's -1 slots; keep
    the top k, sorted by similarity (ties by id). Missing slots are id -1, similarity NaN."""
    n = len(query_rows)
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_sims = np.full((n, k), np.nan, dtype=np.float32)
    for r in range(n):
        mask = (ids[r] >= 0) & (ids[r] != query_rows[r])
        row_ids, row_sims = ids[r][mask], sims[r][mask]
        order = np.lexsort((row_ids, -row_sims))[:k]
        out_ids[r, : len(order)] = row_ids[order]
        out_sims[r, : len(order)] = row_sims[order]
    return out_ids, out_sims


def knn(emb: np.ndarray, s: KnnSettings, batch: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    index = build_index(emb, s)
    n = len(emb)
    k_search = min(s.k + 1, n)
    all_ids = np.full((n, s.k), -1, dtype=np.int64)
    all_sims = np.full((n, s.k), np.nan, dtype=np.float32)
    for start in range(0, n, batch):
        q = np.ascontiguousarray(emb[start : start + batch])
        sims, ids = index.search(q, k_search)
        rows = np.arange(start, start + len(q))
        all_ids[rows], all_sims[rows] = clean_neighbours(rows, ids, sims, s.k)
    return all_ids, all_sims


def recall_at(truth: np.ndarray, approx: np.ndarray, k: int = 10) -> float:
    """Share of the true top-k neighbours that the approximate search found."""
    hits = 0
    total = 0
    for t, a in zip(truth[:, :k], approx[:, :k], strict=True):
        t = t[t >= 0]
        hits += len(np.intersect1d(t, a[a >= 0]))
        total += len(t)
    return hits / max(1, total)


# -- the union graph -----------------------------------------------------------------------------


@dataclass
class Graph:
    """Undirected weighted graph in CSR form; each row's neighbours sorted by weight desc, then id."""

    indptr: np.ndarray  # int64[n + 1]
    indices: np.ndarray  # int32[nnz]
    weights: np.ndarray  # float32[nnz]

    @property
    def n(self) -> int:
        return len(self.indptr) - 1

    def degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    def neighbours(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.indptr[u], self.indptr[u + 1]
        return self.indices[a:b], self.weights[a:b]


class KnnLists:
    """The kNN lists as chunks of rows: arrays in memory, or ``.npy`` files read chunk by chunk
    (plain reads, not a memory map, so the lists are never resident all at once: what lets 10M
    documents' graph be built in the memory of its edges alone)."""

    def __init__(self, ids, sims):
        self._files = isinstance(ids, str | Path)
        if self._files:
            self._ids, self._ids_meta = _npy_meta(ids)
            self._sims, self._sims_meta = _npy_meta(sims)
            self.n, self.k = self._ids_meta[0]
            if self._sims_meta[0] != (self.n, self.k):
                raise ValueError(f"kNN files disagree: ids {self._ids_meta[0]}, similarities {self._sims_meta[0]}")
        else:
            self._ids, self._sims = ids, sims
            self.n, self.k = ids.shape

    def chunks(self, rows: int = 1 << 20):
        """(first row, ids, sims) per chunk. From files, every chunk is read into the same two
        buffers (fresh memory costs a first touch, 2 s a GB on a VM), so a chunk is valid only
        until the next is yielded."""
        if not self._files:
            for a in range(0, self.n, rows):
                yield a, self._ids[a:a + rows], self._sims[a:a + rows]
            return
        rows = max(1, min(rows, self.n))
        ids_buf = np.empty((rows, self.k), dtype=self._ids_meta[1])
        sims_buf = np.empty((rows, self.k), dtype=self._sims_meta[1])
        with open(self._ids, "rb") as fi, open(self._sims, "rb") as fs:
            fi.seek(self._ids_meta[2])
            fs.seek(self._sims_meta[2])
            for a in range(0, self.n, rows):
                m = min(rows, self.n - a)
                yield a, _read_into(fi, ids_buf[:m], self._ids), _read_into(fs, sims_buf[:m], self._sims)


def _npy_meta(path) -> tuple[str, tuple]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: expected a C-ordered 2-d array")
        return str(path), (shape, np.dtype(dtype), f.tell())


def _read_into(f, buf: np.ndarray, path: str) -> np.ndarray:
    view = memoryview(buf).cast("B")
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise ValueError(f"{path}: the file ends early (truncated .npy?)")
        got += n
    return buf


def union_graph(nbr_ids, nbr_sims, keep: np.ndarray | None = None, directed: bool = False,
                use_top: int | None = None, chunk_rows: int = 1 << 20, batch_rows: int = 1 << 18,
                block_rows_log2: int = 14, threads: int = 1) -> Graph:
    """Edge (u, v) if v in N(u) or u in N(v), weight = similarity (the larger if both) [paper].
    ``directed=True`` with ``use_top`` gives the reference code's view: only u's own top lists.

    O(N k) time and memory in three compiled passes over the lists, chunk by chunk: count each
    row's half-edges, fill them as packed (id, weight) keys into one uint64 array, then sort and
    merge each row in place (its result never outgrows its slot). Peak memory is that array (8
    bytes a half-edge) plus one chunk of the lists; the lists may be ``.npy`` paths. ``threads``
    (0: every core) split the rows into ranges, each counted, filled and merged by one thread
    (which reads every list, writes only its rows); the graph is the same for any number.
    ``batch_rows`` and ``block_rows_log2`` tune the fill (see :func:`_fill_edges`), not the graph."""
    lists = nbr_ids if isinstance(nbr_ids, KnnLists) else KnnLists(nbr_ids, nbr_sims)
    n = lists.n
    if n >= 2**31:
        raise ValueError("more than 2^31 documents: partition the corpus (spec 6) and walk the parts")
    top = lists.k if use_top is None else min(use_top, lists.k)
    keep_arr = np.ones(n, dtype=np.bool_) if keep is None else np.ascontiguousarray(keep, dtype=np.bool_)
    ranges = row_ranges(n, threads)

    def prepared():
        for a, ids, sims in lists.chunks(chunk_rows):
            yield a, np.ascontiguousarray(ids[:, :top]), np.ascontiguousarray(sims[:, :top], dtype=np.float32)

    counts = np.zeros(n + 1, dtype=np.int64)
    for a, ids, sims in prepared():
        _count_edges(ids, sims, a, keep_arr, directed, counts, ranges)
    indptr = np.cumsum(counts)
    width = int(counts.max()) if n else 0
    del counts
    # One uint64 a half-edge, (neighbour id, weight) packed as a sort key: the fill's random writes
    # touch one array, not two, and the merge sorts the keys where they lie.
    edges = np.empty(indptr[-1], dtype=np.uint64)
    fill = indptr[:-1].copy()
    # Per thread, the reverse half-edges of one batch of rows, bucketed by destination block.
    batch_rows = max(1, min(batch_rows, chunk_rows, n))
    buf_dest = np.empty((len(ranges) - 1, batch_rows * top if not directed else 0), dtype=np.int32)
    buf_key = np.empty(buf_dest.shape, dtype=np.uint64)
    for a, ids, sims in prepared():
        _fill_edges(ids, sims, a, keep_arr, directed, fill, edges, buf_dest, buf_key, batch_rows, block_rows_log2,
                    ranges)
    del fill, buf_dest, buf_key
    nnz = _finish_rows(indptr, edges, width, ranges)
    # Each merged edge is an (int32 id, float32 weight) pair in its uint64 slot: the graph's arrays
    # are strided views of it (no second copy; a row's ids and weights share cache lines).
    pairs = edges[:nnz].view(np.int32)
    return Graph(indptr, pairs[0::2], pairs[1::2].view(np.float32))


def row_ranges(n: int, threads: int) -> np.ndarray:
    """Bounds of ``threads`` contiguous row ranges (0: as many as numba has threads)."""
    import numba

    t = numba.get_num_threads() if threads <= 0 else min(threads, numba.config.NUMBA_NUM_THREADS)
    t = max(1, min(t, n))
    return np.linspace(0, n, t + 1).astype(np.int64)


# Each pass is a plain compiled function over one range of rows, called directly for one thread
# and from a prange over the ranges for more: numba's parallel lowering of the same loop body
# inline ran a quarter slower on one thread.


def _count_edges(ids, sims, first, keep, directed, counts, ranges) -> None:
    if len(ranges) == 2:
        _count_range(ids, sims, first, keep, directed, counts, ranges[0], ranges[1])
    else:
        _count_parallel(ids, sims, first, keep, directed, counts, ranges)


@njit(cache=True, parallel=True)
def _count_parallel(ids, sims, first, keep, directed, counts, ranges):
    for t in prange(len(ranges) - 1):
        _count_range(ids, sims, first, keep, directed, counts, ranges[t], ranges[t + 1])


def _fill_edges(ids, sims, first, keep, directed, fill, edges, buf_dest, buf_key, batch, block_log2, ranges) -> None:
    if len(ranges) == 2:
        _fill_range(ids, sims, first, keep, directed, fill, edges, buf_dest[0], buf_key[0], batch, block_log2,
                    ranges[0], ranges[1])
    else:
        _fill_parallel(ids, sims, first, keep, directed, fill, edges, buf_dest, buf_key, batch, block_log2, ranges)


@njit(cache=True, parallel=True)
def _fill_parallel(ids, sims, first, keep, directed, fill, edges, buf_dest, buf_key, batch, block_log2, ranges):
    for t in prange(len(ranges) - 1):
        _fill_range(ids, sims, first, keep, directed, fill, edges, buf_dest[t], buf_key[t], batch, block_log2,
                    ranges[t], ranges[t + 1])


@njit(cache=True)
def _count_range(ids, sims, first, keep, directed, counts, lo, hi):
    """Half-edges per row (into ``counts[u + 1]``) of the rows lo..hi-1."""
    rows, k = ids.shape
    for r in range(rows):
        u = first + r
        if not keep[u]:
            continue
        own = lo <= u < hi
        if directed and not own:
            continue
        for j in range(k):
            v = ids[r, j]
            if v < 0 or v == u or not keep[v] or sims[r, j] != sims[r, j]:
                continue
            if own:
                counts[u + 1] += 1
            if not directed and lo <= v < hi:
                counts[v + 1] += 1


@njit(cache=True)
def _fill_range(ids, sims, first, keep, directed, fill, edges, buf_dest, buf_key, batch, block_log2, lo, hi):
    """Each half-edge of the rows lo..hi-1 as the key (id, weight descending) in its row's next
    free slot. A row's own list goes straight to its slots (sequential writes); the reverse
    half-edges of ``batch`` rows, bound for random rows, are first bucketed by destination block
    (2^block_log2 rows: their counters fit a core's L2), then written a block at a time: 7.8 s ->
    4.8 s at 10M on one thread."""
    rows, k = ids.shape
    bits = sims.view(np.uint32)
    first_block = lo >> block_log2
    n_blocks = ((hi - 1) >> block_log2) - first_block + 1 if hi > lo else 0
    starts = np.empty(n_blocks + 1, dtype=np.int64)
    for r0 in range(0, rows, batch):
        r1 = min(rows, r0 + batch)
        starts[:] = 0
        for r in range(r0, r1):
            u = first + r
            if not keep[u]:
                continue
            own = lo <= u < hi
            if directed and not own:
                continue
            for j in range(k):
                v = ids[r, j]
                if v < 0 or v == u or not keep[v] or sims[r, j] != sims[r, j]:
                    continue
                if own:
                    edges[fill[u]] = (np.uint64(v) << np.uint64(32)) | (_desc_key(bits[r, j], 0) >> np.uint64(32))
                    fill[u] += 1
                if not directed and lo <= v < hi:
                    starts[(v >> block_log2) - first_block + 1] += 1
        if directed:
            continue
        for blk in range(n_blocks):
            starts[blk + 1] += starts[blk]
        put = starts[:-1].copy()
        for r in range(r0, r1):
            u = first + r
            if not keep[u]:
                continue
            for j in range(k):
                v = ids[r, j]
                if v < lo or v >= hi or v == u or not keep[v] or sims[r, j] != sims[r, j]:
                    continue
                blk = (v >> block_log2) - first_block
                buf_dest[put[blk]] = v
                buf_key[put[blk]] = (np.uint64(u) << np.uint64(32)) | (_desc_key(bits[r, j], 0) >> np.uint64(32))
                put[blk] += 1
        for q in range(starts[n_blocks]):
            v = buf_dest[q]
            edges[fill[v]] = buf_key[q]
            fill[v] += 1


@njit(cache=True, inline="always")
def _desc_key(w_bits, v):
    """A uint64 whose ascending order is (weight descending, id ascending)."""
    b = np.uint64(w_bits)
    asc = (~b & np.uint64(0xFFFFFFFF)) if b & np.uint64(0x80000000) else (b | np.uint64(0x80000000))
    return ((~asc & np.uint64(0xFFFFFFFF)) << np.uint64(32)) | np.uint64(v)


@njit(cache=True, inline="always")
def _bits_of(key):
    """The float32 bits a key of :func:`_desc_key` was made from."""
    asc = ~(key >> np.uint64(32)) & np.uint64(0xFFFFFFFF)
    return (asc & np.uint64(0x7FFFFFFF)) if asc & np.uint64(0x80000000) else (~asc & np.uint64(0xFFFFFFFF))


@njit(cache=True, inline="always")
def _sort_small(a, m):
    """Sort ``a[:m]`` in place: insertion sort for the short rows of a kNN graph (about 2 k
    entries for k neighbours; twice as fast as the library sort there), the library's for hubs."""
    if m > 64:
        a[:m].sort()
        return
    for i in range(1, m):
        x = a[i]
        j = i - 1
        while j >= 0 and a[j] > x:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = x


def _finish_rows(indptr, edges, width, ranges) -> int:
    """Per row, in place: one sort of its (weight desc, id) keys, then each neighbour's first
    (heaviest) edge kept, written back from the row's start as (int32 id, float32 weight) pairs.
    Each range of rows is compacted within itself (by its own thread), then the ranges are moved
    together. ``indptr`` becomes the merged rows' offsets; returns the number of edges kept."""
    begin = indptr[ranges[:-1]].copy()  # before any range rewrites its rows' offsets
    if len(ranges) == 2:
        ends = np.array([_finish_range(indptr, edges, width, ranges[0], ranges[1], begin[0])], dtype=np.int64)
    else:
        ends = _finish_parallel(indptr, edges, width, ranges, begin)
    return _close_gaps(indptr, edges, ranges, begin, ends)


@njit(cache=True, parallel=True)
def _finish_parallel(indptr, edges, width, ranges, begin):
    ends = np.empty(len(ranges) - 1, dtype=np.int64)
    for t in prange(len(ranges) - 1):
        ends[t] = _finish_range(indptr, edges, width, ranges[t], ranges[t + 1], begin[t])
    return ends


@njit(cache=True)
def _finish_range(indptr, edges, width, lo, hi, begin):
    """Rows lo..hi-1, compacted from ``begin`` (the first row's slot); returns where they end.
    Duplicate neighbours are found with a small hash table of the row's ids; a merged row is no
    longer than its slot, so the rows before never pass it."""
    size = 64
    while size < 2 * width:
        size *= 2
    mask32 = np.uint64(0xFFFFFFFF)
    by_w = np.empty(width, dtype=np.uint64)
    slot_id = np.empty(size, dtype=np.uint32)
    slot_row = np.full(size, -1, dtype=np.int64)  # a slot is taken in row u iff slot_row == u
    at = begin
    a = begin
    for u in range(lo, hi):
        b = indptr[u + 1]
        d = b - a
        for q in range(d):
            key = edges[a + q]
            by_w[q] = ((key & mask32) << np.uint64(32)) | (key >> np.uint64(32))
        _sort_small(by_w, d)
        m = 0
        for j in range(d):
            v = np.uint32(by_w[j] & mask32)
            h = (v * np.uint32(2654435769)) & np.uint32(size - 1)
            seen = False
            while slot_row[h] == u:
                if slot_id[h] == v:
                    seen = True
                    break
                h = (h + np.uint32(1)) & np.uint32(size - 1)
            if seen:
                continue  # a lighter (or equal) copy of an edge already kept
            slot_row[h] = u
            slot_id[h] = v
            # little-endian pair: id in the low half, weight bits in the high
            edges[at + m] = (np.uint64(_bits_of(by_w[j])) << np.uint64(32)) | np.uint64(v)
            m += 1
        at += m
        a = b
        indptr[u + 1] = at
    return at


@njit(cache=True)
def _close_gaps(indptr, edges, ranges, begin, ends):
    """Move each range's compacted rows down to the end of the range before; returns the total."""
    at = ends[0] if len(ends) else 0
    for t in range(1, len(ends)):
        shift = begin[t] - at
        for q in range(begin[t], ends[t]):
            edges[q - shift] = edges[q]
        for u in range(ranges[t], ranges[t + 1]):
            indptr[u + 1] -= shift
        at += ends[t] - begin[t]
    return at


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


# -- packing -----------------------------------------------------------------------------------


@dataclass
class Packed:
    input_ids: np.ndarray  # int32[n_contexts, L]
    spans: list[list[dict]]  # per context: {doc, start, end, doc_tok_offset}
    docs_in_tail: np.ndarray  # doc indexes found only in a dropped last context
    cut: tuple[int, int, int] | None = None  # (doc, tokens kept, tokens with EOS) of the doc the drop cuts


def pack(order: np.ndarray, tokens: list[np.ndarray], length: int, eos_id: int | None,
         drop_last: bool = True, pad_id: int = 0) -> Packed:
    """Concatenate documents in ``order`` (``eos_id`` after each) and cut windows of ``length``."""
    pieces = []
    bounds = []  # (doc, global_start, global_end)
    at = 0
    for d in order.tolist():
        t = tokens[d]
        if eos_id is not None:
            t = np.concatenate([t, np.array([eos_id], dtype=t.dtype)])
        pieces.append(t.astype(np.int32, copy=False))
        bounds.append((d, at, at + len(t)))
        at += len(t)
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    n_full = len(stream) // length
    n_ctx = n_full if drop_last else -(-len(stream) // length)
    ids = np.full((n_ctx, length), pad_id, dtype=np.int32)
    if n_ctx:
        flat = stream[: n_ctx * length]
        ids.reshape(-1)[: len(flat)] = flat
    spans: list[list[dict]] = [[] for _ in range(n_ctx)]
    tail = []
    cut = None
    limit = n_ctx * length
    for d, a, b in bounds:
        if a >= limit:
            tail.append(d)
            continue
        if b > limit:
            cut = (d, limit - a, b - a)
        c = a // length
        while c < n_ctx and c * length < b:
            lo, hi = max(a, c * length), min(b, (c + 1) * length)
            spans[c].append({"doc": d, "start": lo - c * length, "end": hi - c * length, "doc_tok_offset": lo - a})
            c += 1
    return Packed(ids, spans, np.array(tail, dtype=np.int64), cut)


# -- quality -------------------------------------------------------------------------------------


def adjacent_similarity(emb: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Cosine similarity of each consecutive pair of documents in ``order``."""
    a, b = emb[order[:-1]], emb[order[1:]]
    return np.einsum("ij,ij->i", a, b)


def centre(emb: np.ndarray) -> np.ndarray:
    """Vectors minus their mean, L2-normalised again (removes the direction every document shares)."""
    c = emb - emb.mean(axis=0, keepdims=True)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def context_similarity(emb: np.ndarray, spans: list[list[dict]]) -> float:
    """Mean pairwise cosine similarity of the distinct documents inside each context (contexts
    with one document are left out), averaged over contexts."""
    values = []
    for ctx in spans:
        docs = sorted({s["doc"] for s in ctx})
        if len(docs) < 2:
            continue
        e = emb[docs]
        g = e @ e.T
        m = len(docs)
        values.append((g.sum() - np.trace(g)) / (m * (m - 1)))
    return float(np.mean(values)) if values else float("nan")


def char_ngram_jaccard(a: str, b: str, n: int = 3) -> float:
    sa = {a[i : i + n] for i in range(max(0, len(a) - n + 1))}
    sb = {b[i : i + n] for i in range(max(0, len(b) - n + 1))}
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def ngram_filter(order: np.ndarray, texts: list[str], threshold: float = 0.85, prefix: int = 100,
                 n: int = 3) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """[code] After ordering, drop a document whose first ``prefix`` characters have a character
    ``n``-gram Jaccard above ``threshold`` with the previously kept document's."""
    kept = []
    dropped = []
    last = None
    for d in order.tolist():
        if last is not None:
            j = char_ngram_jaccard(texts[d][:prefix], texts[last][:prefix], n)
            if j > threshold:
                dropped.append((d, last, j))
                continue
        kept.append(d)
        last = d
    return np.array(kept, dtype=np.int64), dropped
