"""In-Context Pretraining benchmarks.

    .venv/bin/python bench/icp.py traversal [--sizes 1000000 10000000] [--k 20]
    .venv/bin/python bench/icp.py knn [--docs 100000]

traversal: the greedy walk on synthetic kNN graphs (random neighbours, similarities sorted), one
core, side by side with the paper's Algorithm 1 written over Python dicts and sets (the way a
researcher would write it; the reference code is such a loop). The reference run's figure is
235M documents in 12 h on 20 CPUs, i.e. about 270 documents per second per CPU.

knn: exact (flat) vs IVF search over real-text embeddings (MiniLM, first 64 tokens of 500-character
windows of the Paul Graham essays, KJV chapters and Python docs; cached under $LONGFORGE_HOME), one
core: build + search time and recall@10 against the exact result.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.progress import format_table  # noqa: E402
from stages import icp_core as core  # noqa: E402

REFERENCE_DOCS_PER_CPU_S = 235_266_464 / (12 * 3600) / 20


def synthetic_knn(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, n, size=(n, k), dtype=np.int64)
    sims = rng.random((n, k), dtype=np.float32)
    sims = -np.sort(-sims, axis=1)
    return ids, sims


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def python_sets_walk(ids: np.ndarray, sims: np.ndarray) -> float:
    """Seconds for Algorithm 1 over dicts and sets, graph building included as the researcher would."""
    t0 = time.perf_counter()
    n = len(ids)
    adj: list[dict[int, float]] = [{} for _ in range(n)]
    for u, (row_i, row_s) in enumerate(zip(ids.tolist(), sims.tolist(), strict=True)):
        for v, s in zip(row_i, row_s, strict=True):
            if v != u:
                if s > adj[u].get(v, -1.0):
                    adj[u][v] = s
                if s > adj[v].get(u, -1.0):
                    adj[v][u] = s
    t_graph = time.perf_counter() - t0
    core.greedy_walk_python(dict(enumerate(adj)))
    del adj
    gc.collect()
    return t_graph, time.perf_counter() - t0 - t_graph


def traversal(sizes: list[int], k: int, python_max: int) -> None:
    # Compile once on a small graph so that no row pays for numba's JIT.
    g = core.union_graph(*synthetic_knn(1000, k))
    core.greedy_walk(g)
    rows = []
    for n in sizes:
        ids, sims = synthetic_knn(n, k)
        t0 = time.perf_counter()
        graph = core.union_graph(ids, sims)
        t_graph = time.perf_counter() - t0
        t0 = time.perf_counter()
        walk = core.greedy_walk(graph)
        t_walk = time.perf_counter() - t0
        jumps = int(walk.via_jump.sum())
        rows.append(("longforge (numba, CSR arrays)", n, round(t_graph, 2), round(t_walk, 2), round(n / t_walk),
                     round(n / t_walk / REFERENCE_DOCS_PER_CPU_S), jumps, round(peak_rss_gb(), 1)))
        print(rows[-1], flush=True)
        del graph, walk
        gc.collect()
        if n <= python_max:
            t_g, t_w = python_sets_walk(ids, sims)
            rows.append(("Algorithm 1 over Python sets", n, round(t_g, 2), round(t_w, 2), round(n / t_w),
                         round(n / t_w / REFERENCE_DOCS_PER_CPU_S), "", round(peak_rss_gb(), 1)))
            print(rows[-1], flush=True)
        del ids, sims
        gc.collect()
    print()
    print(f"k = {k}, one core; reference run: {REFERENCE_DOCS_PER_CPU_S:.0f} documents/s per CPU")
    print(format_table(["walk", "nodes", "graph s", "walk s", "nodes/s", "x reference", "jumps", "peak GB"],
                       rows))


def knn(n_docs: int) -> None:
    import tempfile

    import pyarrow.parquet as pq

    from bench.engine import make_documents  # the same real-text windows as the engine benchmark
    from gpu_jobs.embed import EmbedSettings, embed_documents

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "docs.parquet"
        make_documents(n_docs, src)
        t = pq.read_table(src)
    t0 = time.perf_counter()
    emb, _, new = embed_documents(t.column("id").to_pylist(), t.column("text").to_pylist(),
                                  EmbedSettings("minilm", max_tokens=64, batch_size=64, device="cpu"))
    t_embed = time.perf_counter() - t0
    print(f"{len(emb):,} embeddings ({new:,} computed now, {t_embed:.0f} s)", flush=True)
    rows = []
    t0 = time.perf_counter()
    exact_ids, _ = core.knn(emb, core.KnnSettings(k=10, index="flat", threads=1))
    t_exact = time.perf_counter() - t0
    rows.append(("exact (IndexFlatIP)", round(t_exact, 1), 1.0))
    for nlist, nprobe in ((1024, 8), (1024, 32), (1024, 64)):
        t0 = time.perf_counter()
        ivf_ids, _ = core.knn(emb, core.KnnSettings(k=10, index="ivf", nlist=nlist, nprobe=nprobe, threads=1))
        rows.append((f"IVF{nlist}, nprobe={nprobe}", round(time.perf_counter() - t0, 1),
                     round(core.recall_at(exact_ids, ivf_ids, 10), 4)))
        print(rows[-1], flush=True)
    t0 = time.perf_counter()
    hnsw_ids, _ = core.knn(emb, core.KnnSettings(k=10, index="hnsw", threads=1))
    rows.append(("HNSW32, efSearch=128", round(time.perf_counter() - t0, 1),
                 round(core.recall_at(exact_ids, hnsw_ids, 10), 4)))
    print()
    print(f"{len(emb):,} x {emb.shape[1]}-d MiniLM embeddings of real text, k = 10, one core")
    print(format_table(["search", "build + search s", "recall@10"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    tr = sub.add_parser("traversal")
    tr.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    tr.add_argument("--k", type=int, default=20)
    tr.add_argument("--python-max", type=int, default=1_000_000,
                    help="largest graph walked with Python sets too (10M needs ~40 GB that way)")
    kn = sub.add_parser("knn")
    kn.add_argument("--docs", type=int, default=100_000)
    args = ap.parse_args()
    if args.what == "traversal":
        traversal(args.sizes, args.k, args.python_max)
    else:
        knn(args.docs)


if __name__ == "__main__":
    main()
