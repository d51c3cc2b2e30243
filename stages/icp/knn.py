"""ICP's nearest neighbours: exact or IVF search by faiss over normalised embeddings (spec 3.1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
