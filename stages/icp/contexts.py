"""ICP's contexts: documents in the walk's order, packed into fixed-length windows (spec 3.5), with
the in-context similarity against a random order."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Literal

import numpy as np
from pydantic import Field

from schemas import CONTEXT, ORDER_FIELDS, TEXT_RECORD, RecordSchema
from stages import register
from stages.base import (
    Dropped,
    GroupStage,
    Outcome,
    StageParams,
    TokenizerRef,
    Truncated,
)
from stages.blocks.packing import StreamPacker
from stages.blocks.spill import GroupScratch, RowSpill
from stages.icp import core

_TOKENIZE_BATCH = 256  # documents tokenized at once


def _batches(records: Iterable[dict], n: int) -> Iterator[list[dict]]:
    it = iter(records)
    while batch := list(islice(it, n)):
        yield batch


class PackParams(StageParams):
    tokenizer: TokenizerRef = Field("smollm2", description="the LM tokenizer: smollm2, minilm, or a tokenizer.json")
    context_length: int = Field(8192, gt=0, description="tokens per context [paper: 8192]")
    separator: Literal["eos", "none"] = Field(
        "eos", description="token between documents [ours: the paper does not say]")
    drop_last: bool = Field(True, description="drop the last, shorter context [ours] (false: pad it)")
    shuffle: bool = Field(True, description="shuffle contexts (adjacent contexts are related) [paper]")
    range_docs: int = Field(0, ge=0, description="documents per range of the order, each packed on a worker "
                            "of its own [ours; 0 = the whole order in one range, as the paper]")


@register
class IcpPack(GroupStage):
    """Concatenate documents in order and cut contexts of L tokens; documents may straddle two.

    A per-group stage over ranges of the order: with ``range_docs: 0`` (the default) the whole
    traversal is one range, cut as the paper does, on one worker; a positive value cuts the order
    into ranges of that many documents, each concatenated and cut on a worker of its own (one
    incomplete context per range then goes)."""

    name = "icp_pack"
    Params = PackParams
    input_schema = TEXT_RECORD.extended("ordered_record", 1, (ORDER_FIELDS[0],))

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return CONTEXT

    def setup(self) -> None:
        from gpu_jobs.models import eos_token_id, load_tokenizer

        self._tok = load_tokenizer(self.params.tokenizer)
        self._eos = eos_token_id(self._tok) if self.params.separator == "eos" else None

    def group_of(self, record: dict) -> tuple[str, int]:
        p: PackParams = self.params
        return (f"{record['pos'] // p.range_docs:010d}" if p.range_docs else "all"), record["pos"]

    def build(self, key: str, records: Iterable[dict], metrics: dict[str, float]) -> Iterator[Outcome | Truncated]:
        """One pass over the group's stream: documents tokenized a batch at a time and packed as they
        come (:class:`StreamPacker`), each finished context spilled to disk; then the contexts are
        read back in their shuffled order. Memory: one batch of documents, the documents of one
        context, and 20 bytes a context (offsets, the shuffle, a similarity value); each document's
        token count and embedding are spilled too, for the similarity figures, whose random control
        holds a permutation of the documents (8 bytes each)."""
        p: PackParams = self.params
        packer = StreamPacker(p.context_length, self._eos, p.drop_last,
                              pad_id=self._eos if self._eos is not None else 0)
        tokens_total = 0
        with GroupScratch() as scratch:
            contexts = scratch.rows("contexts", p.context_length, "int32")
            lengths = scratch.rows("lengths", 1, "int64", payloads=False)  # the random control's packing
            emb: RowSpill | None = None

            def spill(made: list) -> None:
                for row, spans in made:
                    contexts.append(row, [(s["doc"], s["start"], s["end"], s["doc_tok_offset"]) for s in spans])

            for batch in _batches(records, _TOKENIZE_BATCH):
                encoded = self._tok.encode_batch_fast([r["text"] for r in batch], add_special_tokens=False)
                for r, e in zip(batch, encoded, strict=True):
                    if len(lengths) == 0 and r.get("emb") is not None:
                        emb = scratch.rows("emb", len(r["emb"]), "float32", payloads=False)
                    if emb is not None:
                        if r.get("emb") is None:
                            raise ValueError(f"record {r['id']!r} has no `emb`, but the first of its group has one")
                        emb.append(np.asarray(r["emb"], dtype=np.float32))
                    t = np.asarray(e.ids, dtype=np.int32)
                    spill(packer.add((len(lengths), r["id"]), t))
                    lengths.append(np.array([len(t)]))
                    tokens_total += len(t)
            last, tail = packer.finish()
            spill(last)
            yield from self._contexts_in_shuffled_order(key, contexts)
            for _, doc_id in tail.docs:
                yield Dropped(doc_id, "in the incomplete last context", f"drop_last with L={p.context_length}")
            if tail.cut is not None:  # the document whose tail falls in the dropped last context
                (_, doc_id), kept, total = tail.cut
                yield Truncated(doc_id, "tail in the incomplete last context", f"{total - kept} of {total} tokens "
                                f"(with EOS) not used; drop_last with L={p.context_length}")
            sums = {"contexts": len(contexts), "tokens": tokens_total, "documents_straddling": tail.straddling,
                    "documents_truncated": int(tail.cut is not None)}
            if emb is not None and len(contexts):
                sums.update(self._similarity_sums(contexts, emb.array(), lengths.array()[:, 0]))
        for k, v in sums.items():
            metrics[k] = metrics.get(k, 0) + v

    def _contexts_in_shuffled_order(self, key: str, contexts: RowSpill) -> Iterator[dict]:
        p: PackParams = self.params
        n_ctx = len(contexts)
        seed = self.seed if key == "all" else int.from_bytes(hashlib.sha256(f"{self.seed}:{key}".encode()).digest()[:4],
                                                             "big")
        positions = np.random.default_rng(seed).permutation(n_ctx) if p.shuffle else np.arange(n_ctx)
        prefix = "ctx-" if key == "all" else f"ctx-{key}-"
        for c in np.argsort(positions, kind="stable"):
            c = int(c)
            yield {"id": f"{prefix}{positions[c]:08d}", "ctx_index": c, "input_ids": contexts.row(c),
                   "spans": [{"doc_id": doc_id, "start": a, "end": b, "doc_tok_offset": off}
                             for (_, doc_id), a, b, off in contexts.payload(c)]}

    def _similarity_sums(self, contexts: RowSpill, emb: np.ndarray, lengths: np.ndarray) -> dict[str, float]:
        """(sum, count) of the in-context similarity over this group's contexts, and over a packing of
        the same documents in a random order (the control), to add up over ranges. ``emb`` and
        ``lengths`` are mapped from the spill; the values are kept as float32, 4 bytes a context."""
        p: PackParams = self.params
        own, control_values = array("f"), array("f")

        def add(values: array, docs: list[int]) -> None:
            if (v := core.context_value(emb, docs)) is not None:
                values.append(v)

        for c in range(len(contexts)):
            add(own, [doc for (doc, _), *_ in contexts.payload(c)])
        control = StreamPacker(p.context_length, self._eos, p.drop_last)
        for d in np.random.default_rng(1).permutation(len(lengths)):
            for _, spans in control.add(int(d), np.zeros(int(lengths[d]), dtype=np.int32)):
                add(control_values, [s["doc"] for s in spans])
        for _, spans in control.finish()[0]:
            add(control_values, [s["doc"] for s in spans])
        sums = {}
        for name, values in (("similarity", own), ("similarity_random", control_values)):
            v = np.frombuffer(values, dtype=np.float32)
            sums[f"{name}_sum"] = core.mean_value(v) * len(v) if len(v) else 0.0
            sums[f"{name}_n"] = len(v)
        return sums

    def summarize_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        out = {k: sums.get(k, 0) for k in ("contexts", "tokens", "documents_straddling", "documents_truncated")}
        if sums.get("similarity_n"):
            out["context_similarity"] = sums["similarity_sum"] / sums["similarity_n"]
        if sums.get("similarity_random_n"):
            out["context_similarity_random"] = sums["similarity_random_sum"] / sums["similarity_random_n"]
        return out
