"""Named, versioned record schemas.

Every record a stage reads or writes has one of these. The planner connects stages by comparing
fields, and writers cast to the resolved schema so that every shard of an artifact agrees.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class RecordSchema:
    """A pyarrow schema with a name and a version, e.g. ``document@1``."""

    name: str
    version: int
    fields: tuple[pa.Field, ...]
    doc: str = ""
    key: str = "id"
    metadata: tuple[tuple[str, str], ...] = ()  # extra Arrow schema metadata a stage records with its output

    @property
    def arrow(self) -> pa.Schema:
        return pa.schema(list(self.fields), metadata={"longforge.schema": self.ref, **dict(self.metadata)})

    def with_metadata(self, **entries: str) -> RecordSchema:
        """This schema with extra Arrow metadata (e.g. the parameters a reader needs to parse the records)."""
        return replace(self, metadata=tuple(sorted({**dict(self.metadata), **entries}.items())))

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def field_map(self) -> dict[str, pa.DataType]:
        return {f.name: f.type for f in self.fields}

    def extended(self, name: str, version: int, extra: tuple[pa.Field, ...], doc: str = "") -> RecordSchema:
        """A schema with this one's fields plus ``extra`` (an extra field replaces one of the same name)."""
        names = {f.name for f in extra}
        kept = tuple(f for f in self.fields if f.name not in names)
        return RecordSchema(name, version, kept + tuple(extra), doc or self.doc, self.key)

    def missing_from(self, produced: RecordSchema) -> list[str]:
        """Fields this schema needs that ``produced`` lacks or types differently (human-readable)."""
        have = produced.field_map()
        problems = []
        for f in self.fields:
            if f.name not in have:
                problems.append(f"field '{f.name}' ({f.type}) is missing")
            elif have[f.name] != f.type:
                problems.append(f"field '{f.name}' is {have[f.name]}, needs {f.type}")
        return problems


@dataclass
class SchemaRegistry:
    """The record schemas records are written with, each registered once, by ``schemas`` or by its
    product's package (``stages/<product>/``). A stage's ``input_schema`` is a requirement (the
    fields it needs), not a record schema, and is not registered."""

    schemas: dict[str, RecordSchema] = field(default_factory=dict)

    def register(self, schema: RecordSchema) -> RecordSchema:
        if schema.ref in self.schemas:
            raise ValueError(f"record schema {schema.ref} is registered twice: give the second a new name or "
                             "version (a record schema has one definition)")
        self.schemas[schema.ref] = schema
        return schema

    def get(self, ref: str) -> RecordSchema:
        return self.schemas[ref]

    def of_table(self, table: pa.Table) -> RecordSchema | None:
        """The registered schema a table was written with: its Arrow metadata names it
        (``longforge.schema``, set by :attr:`RecordSchema.arrow`); None for a table without it."""
        ref = (table.schema.metadata or {}).get(b"longforge.schema")
        return self.schemas.get(ref.decode()) if ref else None


REGISTRY = SchemaRegistry()

DOCUMENT = REGISTRY.register(
    RecordSchema(
        "document",
        1,
        (
            pa.field("id", pa.string(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("source", pa.string()),
            pa.field("language", pa.string()),
            pa.field("license", pa.string()),
            pa.field("metadata", pa.string()),  # JSON object, free-form provenance
        ),
        doc="A document: stable id, text, where it came from, its language and licence.",
    )
)

#: The minimum a reader needs from an input record; everything else is optional.
TEXT_RECORD = REGISTRY.register(
    RecordSchema(
        "text_record",
        1,
        (pa.field("id", pa.string(), nullable=False), pa.field("text", pa.string(), nullable=False)),
        doc="Any record with an id and a text.",
    )
)

LANGUAGE_FIELDS = (pa.field("language", pa.string()), pa.field("language_score", pa.float64()))
TOKEN_FIELDS = (pa.field("n_tokens", pa.int64()),)
SENTENCE_FIELDS = (pa.field("sentences", pa.list_(pa.string())),)

TOKENIZED_DOCUMENT = REGISTRY.register(
    DOCUMENT.extended(
        "tokenized_document",
        1,
        LANGUAGE_FIELDS + TOKEN_FIELDS,
        doc="A document with its detected language and its length in tokens of a named tokenizer.",
    )
)

REJECT = REGISTRY.register(
    RecordSchema(
        "reject",
        1,
        (
            pa.field("stage", pa.string()),
            pa.field("record_id", pa.string()),
            pa.field("reason", pa.string()),  # a category to count by
            pa.field("detail", pa.string()),  # the particulars (which byte, which kept id)
            pa.field("kind", pa.string()),  # "rejected" (bad input) or "dropped" (by design)
        ),
        doc="A record that left the pipeline, and why.",
        key="record_id",
    )
)


def cast_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows to a table of exactly ``schema``: a missing nullable field becomes null, a wrong type fails."""
    columns = {f.name: _column([r.get(f.name) for r in rows], f.type) for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def _column(values: list, type_: pa.DataType) -> list | pa.Array:
    """Numeric list fields held as numpy arrays (token ids) become one flat buffer plus offsets;
    anything else goes through Arrow's own conversion."""
    from schemas.tables import is_numeric_list

    if is_numeric_list(type_) and values and all(isinstance(v, np.ndarray) and v.ndim == 1 for v in values):
        dtype = type_.value_type.to_pandas_dtype()
        offsets = np.zeros(len(values) + 1, dtype=np.int64)
        np.cumsum([len(v) for v in values], out=offsets[1:])
        if offsets[-1] <= np.iinfo(np.int32).max:
            flat = np.concatenate(values).astype(dtype, copy=False) if offsets[-1] else np.zeros(0, dtype)
            return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat, type_.value_type))
    return values


# -- In-Context Pretraining (spec: icp.md, section 2) -----------------------------------------------

EMBEDDING = REGISTRY.register(RecordSchema("icp_embedding", 1, (
    pa.field("id", pa.string(), nullable=False),
    pa.field("emb", pa.list_(pa.float32())),
    pa.field("emb_tokens", pa.int32()),
), doc="An L2-normalised document vector and how many encoder tokens it saw."))

KNN = REGISTRY.register(RecordSchema("icp_knn", 1, (
    pa.field("id", pa.string(), nullable=False),
    pa.field("nbr_ids", pa.list_(pa.string())),
    pa.field("nbr_sims", pa.list_(pa.float32())),
), doc="Nearest neighbours, most similar first, self and missing slots removed."))

DEDUP = REGISTRY.register(RecordSchema("icp_dedup", 1, (
    pa.field("id", pa.string(), nullable=False),
    pa.field("keep", pa.bool_()),
    pa.field("dup_of", pa.string()),
    pa.field("dup_sim", pa.float32()),
    pa.field("dup_method", pa.string()),  # embed | ngram
), doc="The near-duplicate decision for every embedded document."))

ORDER_FIELDS = (
    pa.field("pos", pa.int64()),
    pa.field("run", pa.int64()),
    pa.field("via_jump", pa.bool_()),
    pa.field("sim_prev", pa.float32()),
)

ORDER = REGISTRY.register(RecordSchema("icp_order", 1, (pa.field("id", pa.string(), nullable=False),)
                                       + ORDER_FIELDS, doc="The traversal: position, greedy run, jumps."))

SPAN = pa.struct([
    pa.field("doc_id", pa.string()),
    pa.field("start", pa.int32()),
    pa.field("end", pa.int32()),
    pa.field("doc_tok_offset", pa.int64()),
])

CONTEXT = REGISTRY.register(RecordSchema("icp_context", 1, (
    pa.field("id", pa.string(), nullable=False),  # ctx-<position after shuffling>
    pa.field("ctx_index", pa.int64()),  # position along the traversal, before shuffling
    pa.field("input_ids", pa.list_(pa.int32())),
    pa.field("spans", pa.list_(SPAN)),
), doc="A training context of L tokens and the document pieces it holds."))


# -- Dataset Decomposition (spec: dataset-decomposition.md, section 2) ------------------------------

TOKEN_IDS_FIELDS = (pa.field("input_ids", pa.list_(pa.int32())), pa.field("n_tokens", pa.int64()))

#: What token-level stages (decomposition, packing, knotting) need: an id and its token ids.
TOKEN_IDS_RECORD = REGISTRY.register(RecordSchema(
    "token_ids_record", 1, (pa.field("id", pa.string(), nullable=False),) + TOKEN_IDS_FIELDS,
    doc="Any record with an id and the token ids of its text."))

SEQUENCE = REGISTRY.register(RecordSchema("dd_sequence", 1, (
    pa.field("id", pa.string(), nullable=False),  # <doc id>#<piece index>
    pa.field("doc_id", pa.string()),
    pa.field("bucket", pa.int8()),
    pa.field("length", pa.int32()),
    pa.field("doc_offset", pa.int64()),
    pa.field("piece_idx", pa.int16()),
    pa.field("input_ids", pa.list_(pa.int32())),
), doc="A power-of-two piece of one document, in bucket D_i."))

DROP_LOG = REGISTRY.register(RecordSchema("dd_drop_log", 1, (
    pa.field("id", pa.string(), nullable=False),
    pa.field("doc_tokens", pa.int64()),
    pa.field("dropped_tokens", pa.int64()),
), doc="Tokens of each document left in no bucket (a tail shorter than 2^min)."))

SCHEDULE = REGISTRY.register(RecordSchema("dd_schedule", 1, (
    pa.field("id", pa.string(), nullable=False),  # step-<n>
    pa.field("step", pa.int64()),
    pa.field("cycle", pa.int32()),
    pa.field("bucket", pa.int8()),
    pa.field("seq_ids", pa.list_(pa.string())),
    pa.field("seq_rows", pa.list_(pa.int64())),  # rows of buckets/D<i>/index.parquet
), key="step", doc="One optimisation step: its bucket and the b / 2^i sequences it takes."))

CHUNK = REGISTRY.register(RecordSchema("cc_context", 1, (
    pa.field("id", pa.string(), nullable=False),
    pa.field("ctx_index", pa.int64()),
    pa.field("input_ids", pa.list_(pa.int32())),
    pa.field("spans", pa.list_(SPAN)),
    pa.field("segment_ids", pa.list_(pa.int32())),  # document masks: 1.. per document, 0 = padding
), doc="A concat-and-chunk (or packed) context of L tokens and the document pieces it holds."))


# -- Untie the Knots (spec: untie-the-knots.md, section 2) ----------------------------------------

UTK_CHUNK = pa.struct([
    pa.field("doc_id", pa.string()),
    pa.field("doc_idx", pa.int32()),  # the document piece's position in the sample, before shuffling
    pa.field("chunk_idx", pa.int16()),
    pa.field("n_chunks", pa.int16()),
    pa.field("src_start", pa.int64()),  # token offsets in the document
    pa.field("src_end", pa.int64()),
    pa.field("out_start", pa.int32()),  # where the chunk's content starts in the sample
    pa.field("chunk_label", pa.string()),  # null for a piece that was not split
])

UTK_SAMPLE = REGISTRY.register(RecordSchema("utk_sample", 1, (
    pa.field("id", pa.string(), nullable=False),  # utk-<sample index>
    pa.field("sample_idx", pa.int64()),
    pa.field("tokens", pa.list_(pa.int32())),  # L inputs
    pa.field("labels", pa.list_(pa.int32())),  # L targets (the inputs shifted by one)
    pa.field("loss_mask", pa.list_(pa.uint8())),
    pa.field("position_ids", pa.list_(pa.int32())),  # 0..L-1: no reset per document
    pa.field("utk_applied", pa.bool_()),
    pa.field("chunks", pa.list_(UTK_CHUNK)),  # in output order
    pa.field("seed", pa.int64()),  # this sample's RNG seed: seed * 100000 + sample_idx
), doc="A packed training sample of L tokens, knotted (UtK) or plain."))

UTK_TEXT_VIEW = REGISTRY.register(RecordSchema("utk_text_view", 1, (
    pa.field("id", pa.string(), nullable=False),
    pa.field("utk_applied", pa.bool_()),
    pa.field("text", pa.string()),  # the sample decoded, markers shown as their strings
), doc="A readable view of a sample, for inspection."))

UTK_MARKER = REGISTRY.register(RecordSchema("utk_marker", 1, (
    pa.field("id", pa.string(), nullable=False),  # head_2, tail_1, label_open, ...
    pa.field("text", pa.string()),
    pa.field("token_ids", pa.list_(pa.int32())),
    pa.field("special", pa.bool_()),  # added to the tokenizer as a special token
), doc="A UtK marker and the token ids it is written with."))


# -- Chat samples (LongAlign, GATEAU, ...) ---------------------------------------------------------

MESSAGE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])  # one turn

# -- Scoring jobs (DESIGN.md "Scoring jobs"; spec gateau.md 3.2-3.3) -------------------------------

SCORE_FIELDS = (pa.field("scores", pa.list_(pa.struct([pa.field("metric", pa.string()),
                                                       pa.field("value", pa.float64())]))),)

SCORE = REGISTRY.register(RecordSchema("score", 1, (
    pa.field("id", pa.string(), nullable=False),  # <sample id>/<metric>
    pa.field("sample_id", pa.string()),
    pa.field("job", pa.string()),
    pa.field("model", pa.string()),
    pa.field("revision", pa.string()),
    pa.field("metric", pa.string()),
    pa.field("value", pa.float64()),
    pa.field("settings", pa.string()),  # JSON, with its hash
), doc="One score of one sample by one model and settings (the catalog's scores table, as Parquet)."))
