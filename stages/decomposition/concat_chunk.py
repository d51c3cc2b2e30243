"""Concat-and-chunk, the baseline Dataset Decomposition is measured against: documents' token ids
concatenated (or best-fit packed) and cut into fixed-length contexts, per group."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
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
        documents of one context); ``best_fit`` sorts every piece by length first, so it holds its
        group (bound it with ``groups``)."""
        from stages.blocks.packing import StreamPacker

        p: ConcatChunkParams = self.params
        L = p.context_length
        sums = dict.fromkeys(("contexts", "tokens_in", "tokens_kept", "same_pairs", "total_pairs",
                              "segment_tokens", "segments"), 0)
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
            records = list(records)  # best fit decreasing places the longest pieces first
            ids = [r["id"] for r in records]
            tokens = [np.asarray(r["input_ids"], dtype=np.int32) for r in records]
            sums["tokens_in"] = int(sum(len(t) for t in tokens))
            for row, spans in best_fit_decreasing(tokens, L, p.pad_id):
                yield self._context(key, row, [(ids[d], a, b, off) for d, a, b, off in spans], sums)
        for name, v in sums.items():
            metrics[name] = metrics.get(name, 0) + v

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
