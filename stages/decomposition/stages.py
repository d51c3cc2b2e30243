"""Dataset Decomposition stages: token ids per document, power-of-two buckets, the VSL schedule.

``tokenize_ids`` (per record) -> ``decompose`` (per record, a flat-map: sequences and the drop log)
-> ``bucket_files`` (per group, one bucket a group: flat token files for trainers) ->
``vsl_schedule`` (global over ids, buckets and lengths: the curriculum a trainer replays with
:mod:`stages.decomposition.vsl_replay`). All of it runs on the workers but the schedule's decision. Choices
the spec leaves open are parameters; the run's parameters are in the catalog and the card.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from schemas import DROP_LOG, SCHEDULE, SEQUENCE, TEXT_RECORD, TOKEN_IDS_FIELDS, TOKEN_IDS_RECORD, RecordSchema
from schemas.files import write_parquet_atomic
from stages import register
from stages.base import (
    Dropped,
    GlobalContext,
    GlobalResult,
    GlobalStage,
    GroupStage,
    Measured,
    Outcome,
    RecordStage,
    Resources,
    SideRow,
    StageParams,
    TokenizerRef,
)
from stages.blocks.plots import new_figure, save_figure
from stages.decomposition import core

INDEX_SCHEMA = pa.schema([pa.field("seq_id", pa.string()), pa.field("start", pa.int64()),
                          pa.field("end", pa.int64()), pa.field("doc_id", pa.string()),
                          pa.field("doc_offset", pa.int64())])


class TokenizeIdsParams(StageParams):
    tokenizer: TokenizerRef = Field("smollm2", description="short name (smollm2, minilm), a tokenizer.json or a folder")
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

    def resources(self) -> Resources:
        # The Rust tokenizer releases the GIL: the next batch is encoded while this one is cut.
        return Resources(batch_size=256, ahead=True)

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
        "with P(i) ~ 2^(max-i) [code's randomize], each document's from a generator seeded by (seed, its id) [ours]")

    @model_validator(mode="after")
    def _exponents_in_order(self):
        if self.min_exp > self.max_exp:
            raise ValueError(f"min_exp ({self.min_exp}) must not exceed max_exp ({self.max_exp})")
        return self


@register
class Decompose(RecordStage):
    """Cut every document into power-of-two pieces (its length's binary expansion, largest first): a
    flat-map on the workers. Each piece is a sequence ``<doc id>#<k>``; a document too short for the
    smallest bucket is dropped; every document's row goes to the ``drop_log`` side table."""

    name = "decompose"
    Params = DecomposeParams
    input_schema = TOKEN_IDS_RECORD
    expands = True
    file_label_field = "bucket"  # the output's files: data/train-D08-*.parquet, ...

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return SEQUENCE

    def side_tables(self) -> dict[str, RecordSchema]:
        return {"drop_log": DROP_LOG}

    def file_label(self, value) -> str:
        return f"D{int(value):02d}"

    def overflow_rng(self, doc_id: str) -> np.random.Generator | None:
        """Random overflow draws from a generator of (seed, document id) alone, so a document's
        pieces do not depend on which worker cut it or what it cut before."""
        if self.params.overflow != "random":
            return None
        return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{self.seed}:{doc_id}".encode()).digest()[:8],
                                                    "big"))

    def process(self, record: dict) -> Iterator[Outcome]:
        p: DecomposeParams = self.params
        doc_id = record["id"]
        tokens = np.asarray(record["input_ids"], dtype=np.int32)
        n = len(tokens)
        pieces, tail = core.decompose(n, p.min_exp, p.max_exp, p.plus_one, self.overflow_rng(doc_id))
        yield SideRow("drop_log", {"id": doc_id, "doc_tokens": n, "dropped_tokens": tail})
        if not pieces:
            yield Dropped(doc_id, f"shorter than 2^{p.min_exp} tokens", f"{n} tokens")
        measured = {"tokens_in": n, "tokens_kept": n - tail, "sequences": len(pieces), "attention_pairs": 0.0}
        for k, piece in enumerate(pieces):
            yield {"id": f"{doc_id}#{k}", "doc_id": doc_id, "bucket": piece.bucket, "length": piece.size,
                   "doc_offset": piece.offset, "piece_idx": k,
                   "input_ids": tokens[piece.offset:piece.offset + piece.size]}
            key = f"tokens_bucket_{piece.bucket:02d}"
            measured[key] = measured.get(key, 0) + piece.size
            # Causal attention pairs (~ attention FLOPs) of the sequence: l (l + 1) / 2.
            measured["attention_pairs"] += piece.size * (piece.size + 1) / 2
        yield Measured(measured)

    def summarize_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        p: DecomposeParams = self.params
        total, kept, n = sums.get("tokens_in", 0), sums.get("tokens_kept", 0), sums.get("sequences", 0)
        # Against concat-and-chunk of the same kept tokens into contexts of the largest bucket's length.
        big = 2.0 ** p.max_exp
        cc_pairs = kept / big * big * (big + 1) / 2
        dd_pairs = sums.get("attention_pairs", 0.0)
        out = {"tokens_in": total, "tokens_kept": kept, "dropped_token_share": 1 - kept / total if total else 0.0,
               "sequences": n, "mean_sequence_length": kept / n if n else 0.0,
               "cross_document_attention_share": 0.0, "attention_pairs": dd_pairs,
               "attention_pairs_concat_chunk": cc_pairs,
               "attention_cost_vs_concat_chunk": dd_pairs / cc_pairs if cc_pairs else 0.0}
        out |= {k: v for k, v in sorted(sums.items()) if k.startswith("tokens_bucket_")}
        return out


class BucketFilesParams(StageParams):
    folder: str = Field("buckets", description="folder of the output that takes D<i>/tokens.bin and index.parquet")


@register
class BucketFiles(GroupStage):
    """Per bucket, for trainers, ``<output>/buckets/D<i>/tokens.bin`` (int32, the bucket's sequences
    back to back in id order, for numpy.memmap) and ``D<i>/index.parquet`` (seq_id, start, end,
    doc_id, doc_offset): a per-group stage, one bucket per group, written on the worker that builds
    it. The sequences pass on unchanged (in Parquet they are the output's ``data/train-D<i>-*``)."""

    name = "bucket_files"
    Params = BucketFilesParams
    input_schema = SEQUENCE
    arrays = True

    place_type = pa.string()  # a bucket's sequences reach build in id order

    def group_of(self, record: dict) -> tuple[str, str]:
        return f"D{int(record['bucket']):02d}", record["id"]

    def build(self, key: str, records: Iterable[dict], metrics: dict[str, float]) -> Iterator[Outcome]:
        if self.services.output_dir is None:
            raise RuntimeError("bucket_files needs the run's output folder")
        # In id order (the order vsl_schedule's seq_rows count in), written as they pass.
        n, last = 0, None
        with BucketWriter(Path(self.services.output_dir) / self.params.folder / key) as writer:
            for r in records:
                if last is not None and r["id"] < last:
                    raise RuntimeError(f"bucket_files: {r['id']!r} came after {last!r}; sequences must arrive in "
                                       "id order (parts of an older longforge? rerun with --overwrite)")
                last = r["id"]
                writer.add(r)
                n += 1
                yield r
        metrics[f"sequences_{key}"] = n


class BucketWriter:
    """``tokens.bin`` and ``index.parquet`` of one bucket, written as sequences come (a sequence's
    tokens at a time, the index :data:`INDEX_ROWS` rows at a time), under temporary names renamed
    into place when the bucket is complete."""

    INDEX_ROWS = 10_000  # the row groups of a whole-table write: the same bytes as writing it at once

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._tokens_tmp = folder / f"tokens.bin.tmp-{os.getpid()}"
        self._index_tmp = folder / f"index.parquet.tmp-{os.getpid()}"
        self._tokens = open(self._tokens_tmp, "wb")
        try:
            self._index = pq.ParquetWriter(str(self._index_tmp), INDEX_SCHEMA, compression="zstd",
                                           write_statistics=True)
        except BaseException:
            self._tokens.close()
            self._tokens_tmp.unlink(missing_ok=True)
            raise
        self._rows: list[tuple] = []
        self._end = 0
        self._n = 0

    def add(self, r: dict) -> None:
        ids = np.asarray(r["input_ids"], dtype="<i4")
        ids.tofile(self._tokens)
        self._rows.append((r["id"], self._end, self._end + len(ids), r["doc_id"], r["doc_offset"]))
        self._end += len(ids)
        if len(self._rows) == self.INDEX_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._rows or self._n == 0:
            cols = list(zip(*self._rows, strict=True)) if self._rows else [[] for _ in INDEX_SCHEMA]
            self._index.write_table(pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(cols, INDEX_SCHEMA,
                                                                                              strict=True)],
                                                         schema=INDEX_SCHEMA), row_group_size=self.INDEX_ROWS)
            self._n += len(self._rows)
            self._rows = []

    def __enter__(self) -> BucketWriter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        complete = kind is None
        try:
            self._tokens.close()
            if complete:
                self._flush()
        except BaseException:
            complete = False
            raise
        finally:
            self._index.close()
            if complete:
                os.replace(self._tokens_tmp, self.folder / "tokens.bin")
                os.replace(self._index_tmp, self.folder / "index.parquet")
            else:  # a failed or abandoned bucket leaves nothing half-written
                self._tokens_tmp.unlink(missing_ok=True)
                self._index_tmp.unlink(missing_ok=True)


class ScheduleParams(StageParams):
    curriculum: Literal["uniform", "grow_linear", "grow_p2", "grow_p100", "custom"] = Field(
        "grow_p2", description="bucket odds, shortest first [paper: Grow-P2 with 8 cycles was best]")
    odds: list[float] | None = Field(None, description="custom odds, one per bucket min_exp..max_exp")
    cycles: int = Field(8, ge=1, le=100_000, description="times the short-to-long pattern repeats [paper: 8]")
    budget_tokens: int = Field(2**19, gt=0, le=2**40, description="tokens per step; a batch of D_i holds "
                               "budget / 2^i sequences [code: 64 x 8192 = 524,288]")
    min_exp: int = Field(8, ge=0, le=30)
    max_exp: int = Field(13, ge=0, le=30)

    @model_validator(mode="after")
    def _exponents_in_order(self):
        if self.min_exp > self.max_exp:
            raise ValueError(f"min_exp ({self.min_exp}) must not exceed max_exp ({self.max_exp}): the schedule "
                             "would have no bucket")
        n = self.max_exp - self.min_exp + 1
        if self.curriculum == "custom" and (
                self.odds is None or len(self.odds) != n
                or not all(math.isfinite(x) and x >= 0 for x in self.odds) or not sum(self.odds) > 0):
            raise ValueError(f"custom odds: {n} numbers (one per bucket {self.min_exp}..{self.max_exp}), each "
                             "finite and at least 0, not all 0")
        return self


@register
class VslSchedule(GlobalStage):
    """The variable-sequence-length curriculum (paper Alg. 1), the same on every data-parallel rank:
    a global stage over each sequence's id, bucket and length (never its tokens). ``seq_rows``
    count in id order within a bucket, the order of ``bucket_files``' index."""

    name = "vsl_schedule"
    Params = ScheduleParams
    input_schema = SEQUENCE
    observes = True  # a schedule beside the buckets; the sequences are kept as they are

    def reads(self) -> tuple[str, ...]:
        return ("bucket", "length")

    def decide(self, summaries: pa.Table, ctx: GlobalContext) -> GlobalResult:
        p: ScheduleParams = self.params
        odds = core.odds_for(p.curriculum, p.min_exp, p.max_exp, p.odds)
        ordered = summaries.sort_by([("bucket", "ascending"), ("id", "ascending")])
        by_bucket: dict[int, list[str]] = {}
        bucket_tokens: dict[int, int] = {}
        for b, s, n in zip(ordered.column("bucket").to_pylist(), ordered.column("id").to_pylist(),
                           ordered.column("length").to_pylist(), strict=True):
            by_bucket.setdefault(b, []).append(s)
            bucket_tokens[b] = bucket_tokens.get(b, 0) + n
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
        if ctx.output_dir is not None:
            write_parquet_atomic(table, Path(ctx.output_dir) / "buckets" / "schedule.parquet")
        if ctx.files_dir is not None and steps:
            plot_schedule(table, bucket_tokens, p, Path(ctx.files_dir) / "dd_schedule.png")
        metrics = {"steps": len(steps), "budget_tokens": p.budget_tokens, "cycles": p.cycles,
                   "sequences_left_out": int(sum(left_out.values()))}
        return GlobalResult(artifacts={"schedule": table}, metrics=metrics)


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
