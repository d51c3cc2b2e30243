"""Concat-and-chunk, the baseline Dataset Decomposition is measured against: documents' token ids
concatenated (or best-fit packed) and cut into fixed-length contexts, per group."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import numpy as np
from pydantic import Field

from schemas import TOKEN_IDS_RECORD, RecordSchema
from stages import register
from stages.base import (
    Dropped,
    GroupStage,
    Outcome,
    StageParams,
)
from stages.blocks.spill import GroupScratch


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
    arrays = True

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        from schemas import CHUNK

        return CHUNK

    def group_of(self, record: dict) -> tuple[str, int]:
        p: ConcatChunkParams = self.params
        h = hashlib.sha256(f"{self.seed}:{record['id']}".encode()).digest()
        place = int.from_bytes(h[8:16], "big") >> 1 if p.shuffle and p.packing == "concat" else 0
        return f"{int.from_bytes(h[:8], 'big') % p.groups:05d}", place

    def build(self, key: str, records: Iterable[dict], metrics: dict[str, float]) -> Iterator[Outcome]:
        """``concat`` reads the group's stream once and writes each context as it fills (memory: the
        documents of one context); ``best_fit`` sorts every piece by length first: it spills the
        documents and holds a table of their pieces (see :func:`best_fit_decreasing`)."""
        from stages.blocks.packing import StreamPacker

        p: ConcatChunkParams = self.params
        L = p.context_length
        sums = {"contexts": 0, "tokens_in": 0, "tokens_kept": 0, "same_pairs": 0.0, "total_pairs": 0.0,
                "segment_tokens": 0.0, "segments": 0}
        if p.packing == "concat":
            packer = StreamPacker(L, None, p.drop_last, pad_id=p.pad_id)
            for i, r in enumerate(records):
                t = np.asarray(r["input_ids"], dtype=np.int32)
                sums["tokens_in"] += len(t)
                for row, spans in packer.add((i, r["id"]), t):
                    yield self._context(key, row, _by_id(spans), sums)
            last, tail = packer.finish()
            for row, spans in last:
                yield self._context(key, row, _by_id(spans), sums)
            for _, doc_id in tail.docs:
                yield Dropped(doc_id, "in the incomplete last context", f"drop_last with L={L}")
        else:
            yield from self._best_fit(key, records, sums)
        for name, v in sums.items():
            metrics[name] = metrics.get(name, 0) + v

    def _best_fit(self, key: str, records: Iterable[dict], sums: dict) -> Iterator[dict]:
        p: ConcatChunkParams = self.params
        with GroupScratch() as scratch:
            tokens = scratch.arrays("tokens", "int32")
            docs = scratch.rows("docs", 1, "int64")  # each document's length, and its id
            for r in records:
                t = np.asarray(r["input_ids"], dtype=np.int32)
                tokens.append(t)
                docs.append(np.array([len(t)]), r["id"])
                sums["tokens_in"] += len(t)
            lengths = docs.array()[:, 0]
            for row, spans in best_fit_decreasing(lengths, tokens.read, p.context_length, p.pad_id):
                yield self._context(key, row, [(docs.payload(d), a, b, off) for d, a, b, off in spans], sums)

    def _context(self, key: str, ids_c: np.ndarray, spans: list[tuple[str, int, int, int]], sums: dict) -> dict:
        """One context's record (``spans``: doc id, start, end, offset in the doc), its figures added
        to ``sums``."""
        p: ConcatChunkParams = self.params
        seg = np.zeros(p.context_length, dtype=np.int32)  # 0 = padding
        for k, (_, a, b, _) in enumerate(spans):
            seg[a:b] = k + 1
            n = b - a
            sums["same_pairs"] += n * (n + 1) / 2
            sums["segment_tokens"] += n
            sums["segments"] += 1
            sums["tokens_kept"] += n
        used = max((b for _, _, b, _ in spans), default=0)
        sums["total_pairs"] += used * (used + 1) / 2
        c = sums["contexts"]
        sums["contexts"] += 1
        return {"id": f"ctx-{key}-{c:08d}", "ctx_index": c, "input_ids": ids_c,
                "spans": [{"doc_id": d, "start": a, "end": b, "doc_tok_offset": off} for d, a, b, off in spans],
                "segment_ids": seg if p.document_mask else None}

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


def _by_id(spans: list[dict]) -> list[tuple[str, int, int, int]]:
    """The packer's spans (documents keyed by (index, id)) as (doc id, start, end, offset)."""
    return [(s["doc"][1], s["start"], s["end"], s["doc_tok_offset"]) for s in spans]


def best_fit_decreasing(lengths: np.ndarray, tokens_of: Callable[[int, int, int], np.ndarray], length: int,
                        pad_id: int) -> Iterator[tuple[np.ndarray, list[tuple[int, int, int, int]]]]:
    """Documents (their ``lengths``) cut at ``length``, pieces sorted longest first (ties: document,
    then offset), each put in the context with the least room that still fits it (a new context
    when none does); contexts padded to ``length``, in the order they were opened, with spans
    (doc, start, end, offset in the doc). Holds a table of the pieces (about 40 bytes each) and the
    contexts' free room; ``tokens_of(doc, offset, size)`` reads a piece's tokens as its context is
    written."""
    import bisect

    lengths = np.asarray(lengths, dtype=np.int64)
    counts = -(-lengths // length)  # an empty document has no piece
    doc = np.repeat(np.arange(len(lengths), dtype=np.int64), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    off = (np.arange(len(doc), dtype=np.int64) - first) * length
    size = np.minimum(length, lengths[doc] - off)
    order = np.lexsort((off, doc, -size))
    bin_at = np.empty(len(order), dtype=np.int64)  # the context of the k-th piece placed
    room: list[tuple[int, int]] = []  # sorted (free space, context)
    opened = 0
    for lo in range(0, len(order), 65536):
        for k, n in enumerate(size[order[lo:lo + 65536]].tolist(), start=lo):
            j = bisect.bisect_left(room, (n, -1))
            if j == len(room):
                free, b = length - n, opened
                opened += 1
            else:
                free, b = room.pop(j)
                free -= n
            bisect.insort(room, (free, b))
            bin_at[k] = b
    by_context = order[np.argsort(bin_at, kind="stable")]  # each context's pieces in the order placed
    bounds = np.searchsorted(np.sort(bin_at), np.arange(opened + 1))
    for b in range(opened):
        ids = np.full(length, pad_id, dtype=np.int32)
        spans, at = [], 0
        for k in by_context[bounds[b]:bounds[b + 1]].tolist():
            d, o, n = int(doc[k]), int(off[k]), int(size[k])
            ids[at:at + n] = tokens_of(d, o, n)
            spans.append((d, at, at + n, o))
            at += n
        yield ids, spans
