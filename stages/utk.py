"""Untie the Knots as a whole-dataset stage: pack tokenised documents into samples of a target
length and knot a share ``p`` of them (algorithm and parser: :mod:`stages.utk_core`).

Choices the spec leaves open are parameters, and the run records them: the marker strings and ids
(``markers.parquet``, ``utk/markers.json`` and the output files' schema metadata) and, with special
tokens, the extended tokenizer a trainer must load (``utk/tokenizer.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from schemas import TOKEN_IDS_RECORD, UTK_MARKER, UTK_SAMPLE, UTK_TEXT_VIEW, RecordSchema
from stages import register
from stages import utk_core as core
from stages.base import DatasetContext, DatasetResult, DatasetStage, Dropped, StageParams, Truncated


class MarkerText(StageParams):
    """How markers are written; ``{j}`` is the hop of a knot."""

    head: str = "<|utk_h{j}|>"
    tail: str = "<|utk_t{j}|>"
    label_open: str = "<|utk_label|>"
    label_close: str = "<|utk_/label|>"
    bt_open: str = "<|utk_backtrace|>"
    bt_sep: str = "<|utk_sep|>"
    bt_close: str = "<|utk_/backtrace|>"


class UtkParams(StageParams):
    tokenizer: str = Field("smollm2", description="the tokenizer of tokenize_ids (labels and text markers use it)")
    context_length: int = Field(32768, gt=8, description="L: tokens per sample [paper: 131072 or 196608]")
    p: float = Field(0.8, ge=0, le=1, description="share of samples knotted [paper: 0.8; 0.3 'low']; 0 = plain "
                     "packing")
    chunk_odds: dict[int, float] = Field(
        default_factory=lambda: {2: 0.5, 3: 0.5},
        description="odds of cutting a document piece into h chunks [paper: 2-3 chunks work best; code example: "
        "3 chunks]; UNVERIFIED")
    min_split: int = Field(64, ge=2, description="pieces shorter than this stay whole [paper; value UNVERIFIED]")
    label_chars: int = Field(6, ge=1, le=32, description="random A-Za-z0-9 characters per chunk label [code: 6]")
    preserve_order: bool = Field(True, description="each document's chunks keep their order [paper; code: False]")
    markers: Literal["special", "text"] = Field(
        "special", description="special: new special tokens, one id each (utk/tokenizer.json is the extended "
        "tokenizer); text: the marker strings tokenised as ordinary text")
    marker_text: MarkerText = Field(default_factory=MarkerText)
    shuffle_documents: bool = Field(True, description="documents packed in a seeded random order [Megatron]")
    inspect_samples: int = Field(8, ge=0, description="samples decoded into the text_view artifact")

    @field_validator("chunk_odds")
    @classmethod
    def _odds(cls, v: dict[int, float]) -> dict[int, float]:
        if not v or any(h < 1 for h in v) or any(o < 0 for o in v.values()) or sum(v.values()) <= 0:
            raise ValueError("chunk_odds maps chunk counts (>= 1) to non-negative odds, at least one positive")
        return v


def build_markers(tokenizer, p: UtkParams) -> tuple[core.Markers, list[dict]]:
    """The markers' token ids; special tokens are added to ``tokenizer`` (a private copy)."""
    max_h = max(p.chunk_odds)
    t = p.marker_text
    named = {f"head_{j}": t.head.format(j=j) for j in range(2, max_h + 1)}
    named |= {f"tail_{j}": t.tail.format(j=j) for j in range(1, max_h)}
    named |= {"label_open": t.label_open, "label_close": t.label_close, "bt_open": t.bt_open, "bt_sep": t.bt_sep,
              "bt_close": t.bt_close}
    if len(set(named.values())) != len(named):
        raise ValueError("marker_text gives two markers the same string")
    if p.markers == "special":
        from tokenizers import AddedToken

        tokenizer.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in named.values()])
        ids = {k: (int(tokenizer.token_to_id(s)),) for k, s in named.items()}
    else:
        ids = {k: tuple(tokenizer.encode(s, add_special_tokens=False).ids) for k, s in named.items()}
        if any(not v for v in ids.values()):
            raise ValueError("a marker string tokenises to nothing")
    markers = core.Markers(
        head={j: ids[f"head_{j}"] for j in range(2, max_h + 1)}, tail={j: ids[f"tail_{j}"] for j in range(1, max_h)},
        label_open=ids["label_open"], label_close=ids["label_close"], bt_open=ids["bt_open"], bt_sep=ids["bt_sep"],
        bt_close=ids["bt_close"])
    rows = [{"id": k, "text": named[k], "token_ids": list(ids[k]), "special": p.markers == "special"} for k in named]
    return markers, rows


def contains_pattern(tokens: np.ndarray, pattern: tuple[int, ...]) -> bool:
    starts = np.flatnonzero(tokens[:len(tokens) - len(pattern) + 1] == pattern[0]) if len(tokens) >= len(pattern) \
        else np.zeros(0, dtype=np.int64)
    return any(tuple(tokens[s:s + len(pattern)].tolist()) == pattern for s in starts.tolist())


@register
class Utk(DatasetStage):
    """Pack documents into samples of L tokens and knot a share p of them (Untie the Knots)."""

    name = "utk"
    Params = UtkParams
    input_schema = TOKEN_IDS_RECORD

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        return UTK_SAMPLE

    def run(self, ctx: DatasetContext) -> DatasetResult:
        from tokenizers import Tokenizer

        from gpu_jobs.models import eos_token_id, load_tokenizer, tokenizer_path

        p: UtkParams = self.params
        tok = Tokenizer.from_file(str(tokenizer_path(p.tokenizer)))  # a copy: special tokens get added to it
        label_tok = load_tokenizer(p.tokenizer)  # the shared one, unchanged: labels are ordinary text
        eos = eos_token_id(tok)
        markers, marker_rows = build_markers(tok, p)
        ids = ctx.table.column("id").to_pylist()
        lists = ctx.table.column("input_ids").combine_chunks()
        values = lists.values.to_numpy(zero_copy_only=False)
        offsets = lists.offsets.to_numpy()
        docs = [values[offsets[k]:offsets[k + 1]] for k in range(len(ids))]
        dropped: list[Dropped] = []
        keep: list[int] = []
        patterns = [ids_ for ids_, _, _ in markers.patterns()] if p.markers == "text" else []
        for k, d in enumerate(docs):
            if len(d) == 0 or d[-1] != eos:
                raise ValueError(f"document {ids[k]!r} does not end with the end-of-text token of '{p.tokenizer}' "
                                 f"(id {eos}): tokenise with tokenize_ids (append_eos: true) and the same tokenizer")
            if (d[:-1] == eos).any():
                dropped.append(Dropped(ids[k], "end-of-text token inside the document",
                                       "its pieces could not be told apart after knotting"))
                continue
            hit = next((q for q in patterns if contains_pattern(d, q)), None)
            if hit is not None:
                dropped.append(Dropped(ids[k], "contains a marker's tokens", f"token ids {list(hit)}"))
                continue
            keep.append(k)
        order = np.array(keep, dtype=np.int64)
        if p.shuffle_documents:
            order = order[np.random.default_rng(self.seed).permutation(len(order))]
        stream = [docs[k] for k in order.tolist()]
        stream_ids = [ids[k] for k in order.tolist()]
        cfg = core.KnotConfig(length=p.context_length, p=p.p, chunk_odds=dict(p.chunk_odds), min_split=p.min_split,
                              label_chars=p.label_chars, preserve_order=p.preserve_order, seed=self.seed)
        label_tokens = core.LabelTokenizer(lambda s: label_tok.encode(s, add_special_tokens=False).ids)
        table, stats = self._samples(core.pack_samples(stream, cfg, markers, label_tokens), stream_ids, markers)
        # Documents past the last full sample are dropped by design; one cut there counts as used.
        consumed_docs = stats.pop("docs_reached")
        last_end = stats.pop("last_piece_end")
        for k in range(consumed_docs, len(stream)):
            dropped.append(Dropped(stream_ids[k], "after the last full sample", f"{len(stream[k])} tokens"))
        truncated = []
        if consumed_docs and last_end < len(stream[consumed_docs - 1]):
            # The document that straddles the end of the last full sample: its head is in that sample,
            # its tail would start the incomplete one, which is not made. Said, with its size.
            k, n_doc = consumed_docs - 1, len(stream[consumed_docs - 1])
            truncated.append(Truncated(stream_ids[k], "tail after the last full sample",
                                       f"{n_doc - last_end} of {n_doc} tokens not used (tokens {last_end}..{n_doc})"))
        stats["documents_truncated"] = len(truncated)
        stats["tokens_cut_from_truncated"] = (len(stream[consumed_docs - 1]) - last_end) if truncated else 0
        tokens_in = int(sum(len(d) for d in stream))
        m = ctx.metrics.setdefault(self.name, {})
        m.update(stats)
        m.update({"documents_in": len(ids), "tokens_in": tokens_in,
                  "tokens_after_last_sample": tokens_in - stats["content_tokens"],
                  "marker_token_share": stats["marker_tokens"] / max(1, table.num_rows * (p.context_length + 1))})
        meta = {"markers": p.markers, "marker_ids": {r["id"]: r["token_ids"] for r in marker_rows},
                "eos_id": eos, "context_length": p.context_length, "p": p.p,
                "chunk_odds": {str(h): o for h, o in sorted(p.chunk_odds.items())}, "min_split": p.min_split,
                "label_chars": p.label_chars, "preserve_order": p.preserve_order, "seed": self.seed,
                "sample_seed": "MT19937(seed * 100000 + sample_idx)", "tokenizer": p.tokenizer,
                "vocab_size": tok.get_vocab_size(with_added_tokens=True)}
        schema = UTK_SAMPLE.arrow.with_metadata({**UTK_SAMPLE.arrow.metadata, b"longforge.utk": json.dumps(meta)})
        table = pa.Table.from_arrays(table.columns, schema=schema)
        ctx.artifacts["markers"] = pa.Table.from_pylist(marker_rows, schema=UTK_MARKER.arrow)
        ctx.artifacts["text_view"] = self._text_view(table, tok)
        if ctx.output_dir is not None:
            folder = Path(ctx.output_dir) / "utk"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "markers.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            if p.markers == "special":
                tok.save(str(folder / "tokenizer.json"))
        return DatasetResult(table, dropped, consumed=len(ids) - len(dropped), truncated=truncated)

    def _samples(self, samples, stream_ids: list[str], markers: core.Markers) -> tuple[pa.Table, dict]:
        L = self.params.context_length
        cols: dict[str, list] = {"id": [], "sample_idx": [], "utk_applied": [], "chunks": [], "seed": []}
        seqs, masks = [], []
        knotted = split_pieces = pieces = content = marker_tokens = 0
        hist: dict[int, int] = {}
        reached = last_end = 0
        for s in samples:
            seqs.append(s.tokens)
            masks.append(core.loss_mask(s.roles) if s.knotted else np.ones(L, dtype=np.uint8))
            cols["id"].append(f"utk-{s.index:08d}")
            cols["sample_idx"].append(s.index)
            cols["utk_applied"].append(s.knotted)
            cols["seed"].append(self.seed * 100_000 + s.index)
            cols["chunks"].append([{"doc_id": stream_ids[c["doc"]], "doc_idx": c["piece"], "chunk_idx": c["chunk_idx"],
                                    "n_chunks": c["n_chunks"], "src_start": c["src_start"], "src_end": c["src_end"],
                                    "out_start": c["out_start"], "chunk_label": c["label"]} for c in s.chunks])
            knotted += s.knotted
            for pc_ in s.pieces:
                pieces += 1
                content += pc_.end - pc_.start
                if s.knotted:
                    hist[pc_.n_chunks] = hist.get(pc_.n_chunks, 0) + 1
                    split_pieces += pc_.n_chunks > 1
            marker_tokens += int((s.roles != core.CONTENT).sum())
            last = s.pieces[-1]
            reached, last_end = last.doc + 1, last.end
        n = len(seqs)
        flat = np.concatenate(seqs) if n else np.zeros(0, dtype=np.int32)
        step = L + 1
        starts = np.arange(n, dtype=np.int64) * step
        tokens_flat = np.delete(flat, starts + L) if n else flat  # each sample's last token is only a label
        labels_flat = np.delete(flat, starts) if n else flat
        offs = pa.array(np.arange(n + 1, dtype=np.int32) * L)
        table = pa.table({
            "id": pa.array(cols["id"], pa.string()),
            "sample_idx": pa.array(cols["sample_idx"], pa.int64()),
            "tokens": pa.ListArray.from_arrays(offs, pa.array(tokens_flat, pa.int32())),
            "labels": pa.ListArray.from_arrays(offs, pa.array(labels_flat, pa.int32())),
            "loss_mask": pa.ListArray.from_arrays(offs, pa.array(np.concatenate(masks) if n else np.zeros(0, np.uint8),
                                                                 pa.uint8())),
            "position_ids": pa.ListArray.from_arrays(offs, pa.array(np.tile(np.arange(L, dtype=np.int32), n),
                                                                    pa.int32())),
            "utk_applied": pa.array(cols["utk_applied"], pa.bool_()),
            "chunks": pa.array(cols["chunks"], pa.list_(UTK_SAMPLE.arrow.field("chunks").type.value_type)),
            "seed": pa.array(cols["seed"], pa.int64()),
        }, schema=UTK_SAMPLE.arrow)
        knotted_pieces = sum(hist.values())
        stats = {"samples": n, "knotted_samples": knotted, "knotted_share": knotted / n if n else 0.0,
                 "pieces": pieces, "pieces_split": split_pieces,
                 "chunks_per_split_piece": (sum(h * c for h, c in hist.items() if h > 1) / split_pieces
                                            if split_pieces else 0.0),
                 "pieces_per_knotted_sample": knotted_pieces / knotted if knotted else 0.0,
                 "content_tokens": content, "marker_tokens": marker_tokens, "docs_reached": reached,
                 "last_piece_end": last_end}
        stats |= {f"knotted_pieces_in_{h}_chunks": c for h, c in sorted(hist.items())}
        return table, stats

    def _text_view(self, table: pa.Table, tok) -> pa.Table:
        k = min(self.params.inspect_samples, table.num_rows)
        head = table.slice(0, k)
        rows = []
        for rid, applied, toks, labels in zip(head.column("id").to_pylist(), head.column("utk_applied").to_pylist(),
                                              head.column("tokens").to_pylist(), head.column("labels").to_pylist(),
                                              strict=True):
            rows.append({"id": rid, "utk_applied": applied,
                         "text": tok.decode(toks + labels[-1:], skip_special_tokens=False)})
        return pa.Table.from_pylist(rows, schema=UTK_TEXT_VIEW.arrow)
