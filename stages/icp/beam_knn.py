"""kNN on Beam, for corpora whose embeddings do not fit one machine: an IVF search as a pipeline.

1. train the coarse quantizer (k-means, faiss) on a seeded sample, chosen by a hash of the row id so
   that every worker agrees without a global shuffle;
2. assign every vector to its nearest cell (as data) and to its ``nprobe`` nearest cells (as a query);
3. per cell, search the cell's queries against the cell's data exactly (GroupByKey / CoGroupByKey);
4. merge each query's candidates from its cells into the top k (CombinePerKey).

The result equals an IVF-Flat search with the same centroids and ``nprobe``. Embeddings come in and
neighbours go out as Parquet files, so the same pipeline runs on Dataflow / Flink / Spark.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.blocks.beam_pipeline import new_pipeline

EMB_SCHEMA = pa.schema([pa.field("row", pa.int64()), pa.field("emb", pa.list_(pa.float32()))])
OUT_SCHEMA = pa.schema([pa.field("row", pa.int64()), pa.field("nbr_rows", pa.list_(pa.int64())),
                        pa.field("nbr_sims", pa.list_(pa.float32()))])


def _in_sample(row: int, seed: int, rate: float) -> bool:
    h = int.from_bytes(hashlib.sha1(f"{seed}:{row}".encode()).digest()[:8], "big")
    return h / 2**64 < rate


def train_centroids(vectors: list, nlist: int, seed: int) -> np.ndarray:
    import faiss

    rows = sorted(vectors, key=lambda rv: rv[0])  # arrival order must not matter
    x = np.ascontiguousarray(np.stack([np.asarray(v, dtype=np.float32) for _, v in rows]))
    nlist = max(1, min(nlist, len(x) // 39 or 1))
    km = faiss.Kmeans(x.shape[1], nlist, niter=20, seed=seed, spherical=True, verbose=False)
    km.train(x)
    return km.centroids.copy()


class _Assign(beam.DoFn):
    def process(self, rv, centroids, nprobe):
        row, vec = rv
        v = np.asarray(vec, dtype=np.float32)
        scores = centroids @ v
        order = np.lexsort((np.arange(len(scores)), -scores))
        yield beam.pvalue.TaggedOutput("data", (int(order[0]), (row, v)))
        for cell in order[: min(nprobe, len(order))]:
            yield beam.pvalue.TaggedOutput("query", (int(cell), (row, v)))


def _search_cell(cell_group, k: int):
    _, grouped = cell_group
    data = sorted(grouped["data"], key=lambda rv: rv[0])
    queries = grouped["query"]
    if not data or not queries:
        return
    ids = np.array([r for r, _ in data], dtype=np.int64)
    mat = np.stack([v for _, v in data])
    for row, v in queries:
        sims = mat @ v
        keep = ids != row
        cand_ids, cand_sims = ids[keep], sims[keep]
        top = np.lexsort((cand_ids, -cand_sims))[:k]
        yield row, [(float(cand_sims[t]), int(cand_ids[t])) for t in top]


class _TopK(beam.CombineFn):
    def __init__(self, k: int):
        self.k = k

    def create_accumulator(self):
        return []

    def add_input(self, acc, cands):
        return self._trim(acc + list(cands))

    def merge_accumulators(self, accs):
        return self._trim([c for a in accs for c in a])

    def extract_output(self, acc):
        return self._trim(acc)

    def _trim(self, cands):
        best: dict[int, float] = {}
        for s, r in cands:
            if s > best.get(r, -np.inf):
                best[r] = s
        return sorted(((s, r) for r, s in best.items()), key=lambda sr: (-sr[0], sr[1]))[: self.k]


class _WriteShard(beam.DoFn):
    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def process(self, group):
        shard, items = group
        items = sorted(items)
        table = pa.table({"row": [r for r, _ in items],
                          "nbr_rows": [[x for _, x in c] for _, c in items],
                          "nbr_sims": [[s for s, _ in c] for _, c in items]}, schema=OUT_SCHEMA)
        path = Path(self.out_dir) / f"knn-{shard:05d}.parquet"
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp)
        tmp.rename(path)
        yield str(path)


class BeamIvfKnn(beam.PTransform):
    def __init__(self, k: int, nlist: int, nprobe: int, train_size: int, seed: int, n_rows: int):
        super().__init__()
        self.k, self.nlist, self.nprobe, self.seed = k, nlist, nprobe, seed
        self.rate = min(1.0, train_size / max(1, n_rows))

    def expand(self, vectors):
        seed, rate, nlist = self.seed, self.rate, self.nlist
        centroids = (
            vectors
            | "Sample" >> beam.Filter(lambda rv: _in_sample(rv[0], seed, rate))
            | "Gather" >> beam.combiners.ToList()
            | "Train" >> beam.Map(train_centroids, nlist, seed)
        )
        assigned = vectors | "Assign" >> beam.ParDo(
            _Assign(), beam.pvalue.AsSingleton(centroids), self.nprobe).with_outputs("data", "query")
        return (
            {"data": assigned.data, "query": assigned.query}
            | "ByCell" >> beam.CoGroupByKey()
            | "SearchCells" >> beam.FlatMap(_search_cell, self.k)
            | "MergeTopK" >> beam.CombinePerKey(_TopK(self.k))
        )


def beam_knn(emb: np.ndarray, work_dir: Path, *, k: int, nlist: int, nprobe: int, train_size: int, seed: int,
             workers: int = 2, beam_args: list[str] | None = None, shards: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Write ``emb`` as Parquet, run the pipeline, read the neighbours back as (ids, sims) arrays."""
    work_dir.mkdir(parents=True, exist_ok=True)
    src = work_dir / "embeddings"
    src.mkdir(exist_ok=True)
    n = len(emb)
    per = -(-n // shards)
    for s in range(shards):
        part = emb[s * per:(s + 1) * per]
        pq.write_table(pa.table({"row": np.arange(s * per, s * per + len(part), dtype=np.int64),
                                 "emb": pa.array(list(part), type=pa.list_(pa.float32()))}, schema=EMB_SCHEMA),
                       src / f"part-{s:05d}.parquet")
    out = work_dir / "neighbours"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.parquet"):
        old.unlink()
    p = new_pipeline(workers, beam_args)
    vectors = (
        p | "Read" >> beam.io.ReadFromParquet(str(src / "*.parquet"))
        | "RowVector" >> beam.Map(lambda r: (int(r["row"]), np.asarray(r["emb"], dtype=np.float32)))
    )
    (
        vectors
        | BeamIvfKnn(k, nlist, nprobe, train_size, seed, n)
        | "ToShard" >> beam.Map(lambda kv: (kv[0] % shards, kv))
        | "GroupShards" >> beam.GroupByKey()
        | "Write" >> beam.ParDo(_WriteShard(str(out)))
    )
    p.run().wait_until_finish()
    ids = np.full((n, k), -1, dtype=np.int64)
    sims = np.full((n, k), np.nan, dtype=np.float32)
    for f in sorted(out.glob("knn-*.parquet")):
        t = pq.read_table(f).to_pydict()
        for row, nbrs, ss in zip(t["row"], t["nbr_rows"], t["nbr_sims"], strict=True):
            ids[row, : len(nbrs)] = nbrs
            sims[row, : len(ss)] = ss
    return ids, sims
