"""ICP's contexts: documents in the walk's order, packed into fixed-length windows (spec 3.5), with
the in-context similarity against a random order."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
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
from stages.icp import core


class PackParams(StageParams):
    tokenizer: TokenizerRef = Field("smollm2", description="the LM tokenizer: smollm2, minilm, or a tokenizer.json")
    context_length: int = Field(8192, gt=0, description="tokens per context [paper: 8192]")
    separator: Literal["eos", "none"] = Field(
        "eos", description="token between documents [ours: the paper does not say]")
    drop_last: bool = Field(True, description="drop the last, shorter context [ours] (false: pad it)")
    shuffle: bool = Field(True, description="shuffle contexts (adjacent contexts are related) [paper]")
    range_docs: int = Field(0, ge=0, description="documents per range of the order, each packed on a worker "
                            "of its own [ours; 0 = the whole order in one range, as the paper]")


def _similarity_sums(emb: np.ndarray, spans: list[list[dict]]) -> tuple[float, int]:
    """(sum, count) of core.context_similarity's per-context values, to add up over ranges."""
    n = sum(1 for ctx in spans if len({s["doc"] for s in ctx}) > 1)
    return (core.context_similarity(emb, spans) * n if n else 0.0), n


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
        records = list(records)  # this stage's rule reads its group more than once
        p: PackParams = self.params
        eos_id = self._eos
        ids = [r["id"] for r in records]
        tokens = [np.asarray(e.ids, dtype=np.int32)
                  for e in self._tok.encode_batch_fast([r["text"] for r in records], add_special_tokens=False)]
        packed = core.pack(np.arange(len(ids)), tokens, p.context_length, eos_id, p.drop_last,
                           pad_id=eos_id if eos_id is not None else 0)
        n_ctx = len(packed.input_ids)
        seed = self.seed if key == "all" else int.from_bytes(hashlib.sha256(f"{self.seed}:{key}".encode()).digest()[:4],
                                                             "big")
        positions = np.random.default_rng(seed).permutation(n_ctx) if p.shuffle else np.arange(n_ctx)
        prefix = "ctx-" if key == "all" else f"ctx-{key}-"
        for c in sorted(range(n_ctx), key=lambda c: positions[c]):
            yield {"id": f"{prefix}{positions[c]:08d}", "ctx_index": c, "input_ids": packed.input_ids[c],
                   "spans": [{"doc_id": ids[s["doc"]], "start": s["start"], "end": s["end"],
                              "doc_tok_offset": s["doc_tok_offset"]} for s in packed.spans[c]]}
        for d in packed.docs_in_tail.tolist():
            yield Dropped(ids[d], "in the incomplete last context", f"drop_last with L={p.context_length}")
        if packed.cut is not None:  # the document whose tail falls in the dropped last context
            d, kept, total = packed.cut
            yield Truncated(ids[d], "tail in the incomplete last context", f"{total - kept} of {total} tokens "
                            f"(with EOS) not used; drop_last with L={p.context_length}")
        per_doc: dict[int, int] = {}
        for spans in packed.spans:
            for sp in spans:
                per_doc[sp["doc"]] = per_doc.get(sp["doc"], 0) + 1
        sums = {"contexts": n_ctx, "tokens": int(sum(len(t) for t in tokens)),
                "documents_straddling": sum(1 for c in per_doc.values() if c > 1),
                "documents_truncated": int(packed.cut is not None)}
        if records and records[0].get("emb") is not None and n_ctx:
            emb = np.asarray([r["emb"] for r in records], dtype=np.float32)
            sums["similarity_sum"], sums["similarity_n"] = _similarity_sums(emb, packed.spans)
            rand = core.pack(np.random.default_rng(1).permutation(len(ids)), tokens, p.context_length, eos_id,
                             p.drop_last)
            sums["similarity_random_sum"], sums["similarity_random_n"] = _similarity_sums(emb, rand.spans)
        for k, v in sums.items():
            metrics[k] = metrics.get(k, 0) + v

    def summarize_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        out = {k: sums.get(k, 0) for k in ("contexts", "tokens", "documents_straddling", "documents_truncated")}
        if sums.get("similarity_n"):
            out["context_similarity"] = sums["similarity_sum"] / sums["similarity_n"]
        if sums.get("similarity_random_n"):
            out["context_similarity_random"] = sums["similarity_random_sum"] / sums["similarity_random_n"]
        return out
