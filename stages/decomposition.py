"""Dataset Decomposition stages: token ids per document, power-of-two buckets, the VSL schedule.

``tokenize_ids`` (per record) -> ``decompose`` (whole dataset: sequences, per-bucket flat token
files for trainers, the drop log) -> ``vsl_schedule`` (the curriculum a trainer replays with
:mod:`stages.vsl_replay`). Choices the spec leaves open are parameters; the run's parameters are in
the catalog and the card.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from schemas import DROP_LOG, SCHEDULE, SEQUENCE, TEXT_RECORD, TOKEN_IDS_FIELDS, TOKEN_IDS_RECORD, RecordSchema
from stages import decomposition_core as core
from stages import register
from stages.base import (
    DatasetContext,
    DatasetResult,
    DatasetStage,
    Dropped,
    GroupStage,
    Outcome,
    RecordStage,
    StageParams,
)
from stages.plots import new_figure, save_figure

INDEX_SCHEMA = pa.schema([pa.field("seq_id", pa.string()), pa.field("start", pa.int64()),
                          pa.field("end", pa.int64()), pa.field("doc_id", pa.string()),
                          pa.field("doc_offset", pa.int64())])


class TokenizeIdsParams(StageParams):
    tokenizer: str = Field("smollm2", description="short name (smollm2, minilm), a tokenizer.json or a folder")
    append_eos: bool = Field(True, description="append the end-of-text token to every document [code]")
    keep_text: bool = Field(True, description="keep the text next to its token ids; false when only token-level "
                            "stages follow: the input keeps the text, and the documents are half the size")


@register
class TokenizeIds(RecordStage):
    """Token ids of a named offline tokenizer as ``input_ids`` (EOS appended), with ``n_tokens``."""

    name = "tokenize_ids"
    Params = TokenizeIdsParams
    input_schema = TEXT_RECORD

    def setup(self) -> None:
        from gpu_jobs.models import eos_token_id, load_tokenizer

        self._tok = load_tokenizer(self.params.tokenizer)
        self._eos = eos_token_id(self._tok) if self.params.append_eos else None

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        schema = self.adding(upstream, "ids", TOKEN_IDS_FIELDS)
        if self.params.keep_text:
            return schema
        return RecordSchema(schema.name.replace("+ids", "+ids-text"), schema.version,
                            tuple(f for f in schema.fields if f.name != "text"), schema.doc, schema.key)

    def process(self, record: dict):
        return iter(self.process_batch([record])[0])

    def process_batch(self, records: list[dict]) -> list[list[Outcome]]:
        if not hasattr(self, "_tok"):
            self.setup()
        encs = self._tok.encode_batch_fast([r["text"] for r in records], add_special_tokens=False)
        extra = 0 if self._eos is None else 1
        out = []
        for r, e in zip(records, encs, strict=True):
            # int32 arrays, not lists of Python ints: a corpus of those slows the tokenizer itself (the
            # heap it leaves) by about a tenth, and Arrow takes the arrays as they are.
            ids = e.ids
            arr = np.empty(len(ids) + extra, dtype=np.int32)
            arr[:len(ids)] = ids
            if extra:
                arr[-1] = self._eos
            rec = {**r, "input_ids": arr, "n_tokens": len(arr)}
            if not self.params.keep_text:
                del rec["text"]
            out.append([rec])
        return out


class DecomposeParams(StageParams):
    min_exp: int = Field(8, ge=0, le=30, description="smallest bucket 2^min_exp tokens [code: 8 = 256]")
    max_exp: int = Field(13, ge=0, le=30, description="largest bucket 2^max_exp tokens [code: 13 = 8192]")
    plus_one: bool = Field(False, description="store 2^i + 1 tokens per piece (2^i inputs and targets) [code]")
    overflow: Literal["deterministic", "random"] = Field(
        "deterministic", description="parts above 2^max_exp: cut into 2^max pieces [olmo], or sizes drawn "
        "with P(i) ~ 2^(max-i) [code's randomize]")


@register
class Decompose(DatasetStage):
    """Cut every document into power-of-two pieces (its length's binary expansion, largest first)."""

    name = "decompose"
    Params = DecomposeParams
    input_schema = TOKEN_IDS_RECORD

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return SEQUENCE

    def run(self, ctx: DatasetContext) -> DatasetResult:
        p: DecomposeParams = self.params
        if p.min_exp > p.max_exp:
            raise ValueError("min_exp must not exceed max_exp")
        rng = np.random.default_rng(self.seed) if p.overflow == "random" else None
        ids = ctx.table.column("id").to_pylist()
        # Token ids stay in Arrow/numpy: offsets into one flat array, never Python lists.
        lists = ctx.table.column("input_ids").combine_chunks()
        values = lists.flatten().to_numpy(zero_copy_only=False)
        offsets = lists.offsets.to_numpy()
        meta: dict[str, list] = {"id": [], "doc_id": [], "bucket": [], "length": [], "doc_offset": [],
                                 "piece_idx": []}
        starts = []
        drops = {"id": [], "doc_tokens": [], "dropped_tokens": []}
        dropped_docs = []
        per_bucket_tokens: dict[int, int] = {}
        for row in sorted(range(len(ids)), key=ids.__getitem__):  # id order: the random draws too
            doc_id = ids[row]
            n = int(offsets[row + 1] - offsets[row])
            pieces, tail = core.decompose(n, p.min_exp, p.max_exp, p.plus_one, rng)
            drops["id"].append(doc_id)
            drops["doc_tokens"].append(n)
            drops["dropped_tokens"].append(tail)
            if not pieces:
                dropped_docs.append(Dropped(doc_id, f"shorter than 2^{p.min_exp} tokens", f"{n} tokens"))
            for k, piece in enumerate(pieces):
                meta["id"].append(f"{doc_id}#{k}")
                meta["doc_id"].append(doc_id)
                meta["bucket"].append(piece.bucket)
                meta["length"].append(piece.size)
                meta["doc_offset"].append(piece.offset)
                meta["piece_idx"].append(k)
                starts.append(int(offsets[row]) + piece.offset)
                per_bucket_tokens[piece.bucket] = per_bucket_tokens.get(piece.bucket, 0) + piece.size
        order = np.lexsort((np.array(meta["id"], dtype=object), np.array(meta["bucket"]))) if meta["id"] else \
            np.zeros(0, dtype=np.int64)
        sizes = np.asarray(meta["length"], dtype=np.int64)[order]
        begin = np.asarray(starts, dtype=np.int64)[order]
        gathered = (np.concatenate([values[b:b + n] for b, n in zip(begin.tolist(), sizes.tolist(), strict=True)])
                    if len(sizes) else np.zeros(0, dtype=np.int32))
        list_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
        columns = {k: pa.array([v[i] for i in order], SEQUENCE.arrow.field(k).type) for k, v in meta.items()}
        columns["input_ids"] = pa.ListArray.from_arrays(pa.array(list_offsets, pa.int32()),
                                                        pa.array(gathered, pa.int32()))
        table = pa.Table.from_arrays([columns[f.name] for f in SEQUENCE.fields], schema=SEQUENCE.arrow)
        ctx.artifacts["drop_log"] = pa.table(drops, schema=DROP_LOG.arrow)
        if ctx.output_dir is not None:
            write_bucket_files(table, Path(ctx.output_dir) / "buckets")
        total = int(sum(drops["doc_tokens"]))
        kept = int(sum(per_bucket_tokens.values()))
        m = ctx.metrics.setdefault(self.name, {})
        m.update({"tokens_in": total, "tokens_kept": kept, "dropped_token_share": 1 - kept / total if total else 0.0,
                  "sequences": table.num_rows, "mean_sequence_length": kept / table.num_rows if table.num_rows else 0.0,
                  "cross_document_attention_share": 0.0})
        for i, n in sorted(per_bucket_tokens.items()):
            m[f"tokens_bucket_{i:02d}"] = n
        # Causal attention pairs (~ attention FLOPs): sum of l^2 / 2 over sequences, against
        # concat-and-chunk of the same kept tokens into contexts of the largest bucket's length.
        lengths = np.asarray(table.column("length"), dtype=np.float64)
        dd_pairs = float((lengths * (lengths + 1) / 2).sum())
        big = 2.0 ** p.max_exp
        cc_pairs = kept / big * big * (big + 1) / 2
        m.update({"attention_pairs": dd_pairs, "attention_pairs_concat_chunk": cc_pairs,
                  "attention_cost_vs_concat_chunk": dd_pairs / cc_pairs if cc_pairs else 0.0})
        ctx.arrays["bucket_tokens"] = per_bucket_tokens
        buckets, counts = np.unique(table.column("bucket").to_numpy(), return_counts=True)  # table in bucket order
        groups = [(f"D{int(b):02d}", int(c)) for b, c in zip(buckets, counts, strict=True)] or None
        # One Parquet file set per bucket (data/train-D08-*.parquet, ...): the buckets' sequences.
        return DatasetResult(table, dropped_docs, consumed=len(ids) - len(dropped_docs), file_groups=groups)


def write_bucket_files(table: pa.Table, root: Path) -> None:
    """Per bucket, for trainers, ``D<i>/tokens.bin`` (int32, all sequences back to back, for
    numpy.memmap) and ``D<i>/index.parquet`` (seq_id, start, end, doc_id, doc_offset), rows in the
    table's order. The sequences as Parquet are the output's ``data/train-D<i>-*.parquet``."""
    root.mkdir(parents=True, exist_ok=True)
    buckets = table.column("bucket").to_numpy()
    for i in sorted(set(buckets.tolist())):
        part = table.filter(pa.compute.equal(table.column("bucket"), i))
        folder = root / f"D{i:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        flat = np.asarray(part.column("input_ids").combine_chunks().flatten(), dtype=np.int32)
        lengths = np.asarray(part.column("length"), dtype=np.int64)
        ends = np.cumsum(lengths)
        tmp = folder / f"tokens.bin.tmp-{os.getpid()}"
        flat.astype("<i4").tofile(tmp)
        tmp.rename(folder / "tokens.bin")
        index = pa.table({"seq_id": part.column("id"), "start": ends - lengths, "end": ends,
                          "doc_id": part.column("doc_id"), "doc_offset": part.column("doc_offset")},
                         schema=INDEX_SCHEMA)
        tmp = folder / f"index.parquet.tmp-{os.getpid()}"
        pq.write_table(index, tmp)
        tmp.rename(folder / "index.parquet")


class ScheduleParams(StageParams):
    curriculum: Literal["uniform", "grow_linear", "grow_p2", "grow_p100", "custom"] = Field(
        "grow_p2", description="bucket odds, shortest first [paper: Grow-P2 with 8 cycles was best]")
    odds: list[float] | None = Field(None, description="custom odds, one per bucket min_exp..max_exp")
    cycles: int = Field(8, ge=1, description="times the short-to-long pattern repeats [paper: 8]")
    budget_tokens: int = Field(2**19, gt=0, description="tokens per step; a batch of D_i holds budget / 2^i "
                               "sequences [code: 64 x 8192 = 524,288]")
    min_exp: int = Field(8, ge=0)
    max_exp: int = Field(13, ge=0)


@register
class VslSchedule(DatasetStage):
    """The variable-sequence-length curriculum (paper Alg. 1), the same on every data-parallel rank."""

    name = "vsl_schedule"
    Params = ScheduleParams
    input_schema = SEQUENCE

    def run(self, ctx: DatasetContext) -> DatasetResult:
        p: ScheduleParams = self.params
        odds = core.odds_for(p.curriculum, p.min_exp, p.max_exp, p.odds)
        buckets = ctx.table.column("bucket").to_pylist()
        seq_ids = ctx.table.column("id").to_pylist()
        by_bucket: dict[int, list[str]] = {}
        for b, s in zip(buckets, seq_ids, strict=True):  # the table is in (bucket, id) order
            by_bucket.setdefault(b, []).append(s)
        sizes = {i: len(v) for i, v in by_bucket.items()}
        steps, left_out = core.schedule(sizes, odds, p.cycles, p.budget_tokens, self.seed)
        table = pa.table({
            "id": [f"step-{s.step:08d}" for s in steps],
            "step": [s.step for s in steps],
            "cycle": [s.cycle for s in steps],
            "bucket": [s.bucket for s in steps],
            "seq_ids": [[by_bucket[s.bucket][q] for q in s.sequences] for s in steps],
            "seq_rows": [s.sequences for s in steps],
        }, schema=SCHEDULE.arrow)
        ctx.artifacts["schedule"] = table
        if ctx.output_dir is not None:
            path = Path(ctx.output_dir) / "buckets" / "schedule.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").rename(path)
        m = ctx.metrics.setdefault(self.name, {})
        m.update({"steps": len(steps), "budget_tokens": p.budget_tokens, "cycles": p.cycles,
                  "sequences_left_out": int(sum(left_out.values()))})
        if ctx.files_dir is not None and steps:
            plot_schedule(table, ctx.arrays.get("bucket_tokens", {}), p, Path(ctx.files_dir) / "dd_schedule.png")
        return DatasetResult(ctx.table)


def plot_schedule(table: pa.Table, bucket_tokens: dict, p: ScheduleParams, path: Path) -> None:
    fig, (a, b) = new_figure(1, 2, figsize=(11, 4), dpi=110)
    if bucket_tokens:
        ks = sorted(bucket_tokens)
        a.bar([f"D{i}\n{2**i}" for i in ks], [bucket_tokens[i] for i in ks])
    a.set_title("tokens per bucket")
    a.set_ylabel("tokens")
    b.plot(table.column("step").to_numpy(), table.column("bucket").to_numpy(), ".", markersize=2)
    b.set_title(f"bucket drawn at each step ({p.curriculum}, {p.cycles} cycles)")
    b.set_xlabel("step")
    b.set_ylabel("bucket i (length 2^i)")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.18, top=0.9, wspace=0.25)  # not tight_layout (0.2 s)
    save_figure(fig, path)


class ConcatChunkParams(StageParams):
    context_length: int = Field(8192, gt=0, description="L [paper: 2048 or 8192]")
    packing: Literal["concat", "best_fit_decreasing"] = Field(
        "concat", description="concat: shuffle, concatenate, cut at L [Baseline]; best_fit_decreasing: "
        "documents (split at L) packed into contexts by best fit, largest first, padded [Pack]")
    shuffle: bool = Field(True, description="shuffle documents before concatenating (seeded)")
    document_mask: bool = Field(False, description="add segment_ids so attention can be masked at document "
                                "boundaries [+DM]")
    drop_last: bool = Field(True, description="concat: drop the last, shorter context")
    pad_id: int = Field(0, ge=0, description="token that fills packed contexts")
    groups: int = Field(1, gt=0, description="streams, each cut on a worker on its own [ours; 1 = one stream "
                        "of every document, as the paper]")


@register
class ConcatChunk(GroupStage):
    """The concat-and-chunk baseline from the same tokens (and its best-fit-decreasing packed variant).

    A per-group stage: documents go to one of ``groups`` groups by a seeded hash of their id and
    are shuffled by that hash; each group is concatenated and cut (or packed) on a worker. With
    ``groups: 1`` (the default) every document is in one stream, as the paper's baseline."""

    name = "concat_chunk"
    Params = ConcatChunkParams
    input_schema = TOKEN_IDS_RECORD

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        from schemas import CHUNK

        return CHUNK

    def group_of(self, record: dict) -> tuple[str, int]:
        p: ConcatChunkParams = self.params
        h = hashlib.sha256(f"{self.seed}:{record['id']}".encode()).digest()
        place = int.from_bytes(h[8:16], "big") >> 1 if p.shuffle and p.packing == "concat" else 0
        return f"{int.from_bytes(h[:8], 'big') % p.groups:05d}", place

    def build(self, key: str, records: list[dict], metrics: dict[str, float]) -> Iterator[Outcome]:
        from stages.icp_core import pack

        p: ConcatChunkParams = self.params
        ids = [r["id"] for r in records]
        tokens = [np.asarray(r["input_ids"], dtype=np.int32) for r in records]
        L = p.context_length
        if p.packing == "concat":
            packed = pack(np.arange(len(ids)), tokens, L, None, p.drop_last, pad_id=p.pad_id)
            contexts = [(packed.input_ids[c], [(s["doc"], s["start"], s["end"], s["doc_tok_offset"])
                                               for s in packed.spans[c]]) for c in range(len(packed.input_ids))]
            tail_docs = packed.docs_in_tail.tolist()
        else:
            contexts = best_fit_decreasing(tokens, L, p.pad_id)
            tail_docs = []
        same_pairs = total_pairs = seg_sum = 0.0
        segs = 0
        for c, (ids_c, spans) in enumerate(contexts):
            seg = np.zeros(L, dtype=np.int32)  # 0 = padding
            for k, (_, a, b, _) in enumerate(spans):
                seg[a:b] = k + 1
                n = b - a
                same_pairs += n * (n + 1) / 2
                seg_sum += n
                segs += 1
            used = max((b for _, _, b, _ in spans), default=0)
            total_pairs += used * (used + 1) / 2
            yield {"id": f"ctx-{key}-{c:08d}", "ctx_index": c, "input_ids": ids_c,
                   "spans": [{"doc_id": ids[d], "start": a, "end": b, "doc_tok_offset": off} for d, a, b, off in spans],
                   "segment_ids": seg if p.document_mask else None}
        for d in tail_docs:
            yield Dropped(ids[d], "in the incomplete last context", f"drop_last with L={L}")
        kept = int(sum(b - a for _, sp in contexts for _, a, b, _ in sp))
        for name, v in (("contexts", len(contexts)), ("tokens_in", int(sum(len(t) for t in tokens))),
                        ("tokens_kept", kept), ("same_pairs", same_pairs), ("total_pairs", total_pairs),
                        ("segment_tokens", seg_sum), ("segments", segs)):
            metrics[name] = metrics.get(name, 0) + v

    def summarize_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        p: ConcatChunkParams = self.params
        n, total, kept = sums.get("contexts", 0), sums.get("tokens_in", 0), sums.get("tokens_kept", 0)
        pairs = sums.get("total_pairs", 0)
        cross = 0.0 if p.document_mask or not pairs else 1 - sums.get("same_pairs", 0) / pairs
        return {"contexts": n, "tokens_in": total, "tokens_kept": kept,
                "dropped_token_share": 1 - kept / total if total else 0.0,
                "padding_share": 1 - kept / (n * p.context_length) if n else 0.0,
                "mean_context_length": (sums.get("segment_tokens", 0) / sums["segments"] if sums.get("segments")
                                        else 0.0),
                "cross_document_attention_share": cross,
                "attention_pairs": sums.get("same_pairs", 0) if p.document_mask else pairs}


def best_fit_decreasing(tokens: list[np.ndarray], length: int, pad_id: int):
    """Documents cut at ``length``, pieces sorted longest first, each put in the context with the least
    room that still fits it (a new context when none does); contexts padded to ``length``."""
    import bisect

    pieces = []  # (size, doc, offset)
    for d, t in enumerate(tokens):
        for off in range(0, len(t), length):
            pieces.append((min(length, len(t) - off), d, off))
    pieces.sort(key=lambda x: (-x[0], x[1], x[2]))
    bins: list[list] = []  # per context: [(doc, offset, size)]
    room: list[tuple[int, int]] = []  # sorted (free space, bin index)
    for size, d, off in pieces:
        k = bisect.bisect_left(room, (size, -1))
        if k == len(room):
            bins.append([(d, off, size)])
            free, b = length - size, len(bins) - 1
        else:
            free, b = room.pop(k)
            bins[b].append((d, off, size))
            free -= size
        bisect.insort(room, (free, b))
    out = []
    for items in bins:
        ids = np.full(length, pad_id, dtype=np.int32)
        spans, at = [], 0
        for d, off, size in items:
            ids[at:at + size] = tokens[d][off:off + size]
            spans.append((d, at, at + size, off))
            at += size
        out.append((ids, spans))
    return out
