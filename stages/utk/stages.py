"""Untie the Knots as a per-group stage: pack tokenised documents into samples of a target
length and knot a share ``p`` of them (algorithm and parser: :mod:`stages.utk.core`).

Choices the spec leaves open are parameters, and the run records them: the marker strings and ids
(``markers.parquet``, ``utk/markers.json`` and the output files' schema metadata) and, with special
tokens, the extended tokenizer a trainer must load (``utk/tokenizer.json``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from schemas import TOKEN_IDS_RECORD, UTK_MARKER, UTK_SAMPLE, UTK_TEXT_VIEW, RecordSchema
from schemas.files import write_text_atomic
from stages import register
from stages.base import Dropped, GlobalContext, GroupStage, Outcome, SideRow, StageParams, TokenizerRef, Truncated
from stages.utk import core


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
    tokenizer: TokenizerRef = Field("smollm2",
                                    description="the tokenizer of tokenize_ids (labels and text markers use it)")
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
    inspect_samples: int = Field(8, ge=0, description="samples of each stream decoded into the text_view artifact")
    groups: int = Field(1, gt=0, description="streams, each packed on a worker on its own [ours; 1 = one stream "
                        "of every document, as the paper]")

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
class Utk(GroupStage):
    """Pack documents into samples of L tokens and knot a share p of them (Untie the Knots).

    A per-group stage: documents go to one of ``groups`` streams by a seeded hash of their id, in
    an order given by another such hash (``shuffle_documents``), and each stream is packed and
    knotted on a worker. ``groups: 1`` (the default) packs every document into one stream, as the
    paper; more streams spread the work and the memory, each stream leaving its own incomplete last
    sample unmade."""

    name = "utk"
    Params = UtkParams
    input_schema = TOKEN_IDS_RECORD
    arrays = True  # token ids reach build as numpy views (it only reads them)

    def __init__(self, params: UtkParams | None = None, seed: int = 0):
        super().__init__(params, seed)
        self._built = None

    def _markers(self):
        """(extended tokenizer, markers, marker rows, eos id, metadata), made once per process."""
        if self._built is None:
            from tokenizers import Tokenizer

            from gpu_jobs.models import eos_token_id, tokenizer_path

            p: UtkParams = self.params
            tok = Tokenizer.from_file(str(tokenizer_path(p.tokenizer)))  # a copy: special tokens get added to it
            eos = eos_token_id(tok)
            markers, rows = build_markers(tok, p)
            meta = {"markers": p.markers, "marker_ids": {r["id"]: r["token_ids"] for r in rows},
                    "eos_id": eos, "context_length": p.context_length, "p": p.p,
                    "chunk_odds": {str(h): o for h, o in sorted(p.chunk_odds.items())}, "min_split": p.min_split,
                    "label_chars": p.label_chars, "preserve_order": p.preserve_order, "seed": self.seed,
                    "groups": p.groups, "shuffle_documents": p.shuffle_documents,
                    "document_order": "sha256(seed:id) within a stream" if p.shuffle_documents else "input order",
                    "sample_seed": ("MT19937(seed * 100000 + sample_idx)" if p.groups == 1 else
                                    "MT19937((seed * 100000 + stream) * 100000 + sample_idx)"),
                    "tokenizer": p.tokenizer, "vocab_size": tok.get_vocab_size(with_added_tokens=True)}
            self._built = (tok, markers, rows, eos, meta)
        return self._built

    def output_schema(self, upstream: RecordSchema) -> RecordSchema:
        meta = self._markers()[4]
        return UTK_SAMPLE.with_metadata(**{"longforge.utk": json.dumps(meta)})

    def side_tables(self) -> dict[str, RecordSchema]:
        return {"text_view": UTK_TEXT_VIEW}

    def setup(self) -> None:
        from gpu_jobs.models import load_tokenizer

        self._markers()
        self._label_tok = load_tokenizer(self.params.tokenizer)  # the shared one, unchanged: labels are text

    def group_of(self, record: dict) -> tuple[str, int]:
        p: UtkParams = self.params
        h = hashlib.sha256(f"{self.seed}:{record['id']}".encode()).digest()
        place = int.from_bytes(h[8:16], "big") >> 1 if p.shuffle_documents else 0
        return f"{int.from_bytes(h[:8], 'big') % p.groups:05d}", place

    def build(self, key: str, records: Iterable[dict], metrics: dict[str, float]) -> Iterator[Outcome | Truncated]:
        """One stream, packed as its records arrive: the packer holds one sample's documents."""
        p: UtkParams = self.params
        tok, markers, _, eos, _ = self._markers()
        patterns = [ids_ for ids_, _, _ in markers.patterns()] if p.markers == "text" else []
        dropped: list[Dropped] = []  # found while reading, said after the sample being packed
        read = {"documents": 0, "tokens": 0}

        def kept() -> Iterator[tuple[str, np.ndarray]]:
            for r in records:
                read["documents"] += 1
                d = np.asarray(r["input_ids"], dtype=np.int32)
                if len(d) == 0 or d[-1] != eos:
                    raise ValueError(f"document {r['id']!r} does not end with the end-of-text token of "
                                     f"'{p.tokenizer}' (id {eos}): tokenise with tokenize_ids (append_eos: true) "
                                     "and the same tokenizer")
                if (d[:-1] == eos).any():
                    dropped.append(Dropped(r["id"], "end-of-text token inside the document",
                                           "its pieces could not be told apart after knotting"))
                    continue
                hit = next((q for q in patterns if contains_pattern(d, q)), None)
                if hit is not None:
                    dropped.append(Dropped(r["id"], "contains a marker's tokens", f"token ids {list(hit)}"))
                    continue
                read["tokens"] += len(d)
                yield r["id"], d

        stream = core.DocStream(kept())
        base_seed = self.seed if p.groups == 1 else self.seed * 100_000 + int(key)
        cfg = core.KnotConfig(length=p.context_length, p=p.p, chunk_odds=dict(p.chunk_odds), min_split=p.min_split,
                              label_chars=p.label_chars, preserve_order=p.preserve_order, seed=base_seed)
        label_tokens = core.LabelTokenizer(lambda s: self._label_tok.encode(s, add_special_tokens=False).ids)
        prefix = "utk-" if p.groups == 1 else f"utk-{key}-"
        reached, straddling = 0, None
        add = lambda name, v: metrics.__setitem__(name, metrics.get(name, 0) + v)  # noqa: E731
        for s in core.pack_samples(stream, cfg, markers, label_tokens):
            yield from dropped
            dropped.clear()
            rec = self._sample(s, prefix, stream.id_of, base_seed)
            if s.index < p.inspect_samples:
                yield SideRow("text_view", {"id": rec["id"], "utk_applied": s.knotted,
                                            "text": tok.decode(s.tokens.tolist(), skip_special_tokens=False)})
            yield rec
            self._count_sample(s, add)
            last = s.pieces[-1]
            reached = last.doc + 1
            n_last = len(stream[last.doc])
            straddling = (stream.id_of(last.doc), n_last, last.end) if last.end < n_last else None
        yield from dropped
        # Documents past the last full sample are dropped by design; the one cut there counts as used.
        k = reached
        while stream.has(k):
            yield Dropped(stream.id_of(k), "after the last full sample", f"{len(stream[k])} tokens")
            k += 1
        if straddling is not None:
            # The document that straddles the end of the last full sample: its head is in that sample,
            # its tail would start the incomplete one, which is not made. Said, with its size.
            doc_id, n_doc, last_end = straddling
            yield Truncated(doc_id, "tail after the last full sample",
                            f"{n_doc - last_end} of {n_doc} tokens not used (tokens {last_end}..{n_doc})")
            add("documents_truncated", 1)
            add("tokens_cut_from_truncated", n_doc - last_end)
        add("documents_in", read["documents"])
        add("tokens_in", read["tokens"])

    @staticmethod
    def _count_sample(s, add) -> None:
        add("samples", 1)
        add("knotted_samples", int(s.knotted))
        for pc_ in s.pieces:
            add("pieces", 1)
            add("content_tokens", pc_.end - pc_.start)
            if s.knotted:
                add("knotted_pieces", 1)
                add(f"knotted_pieces_in_{pc_.n_chunks}_chunks", 1)
                if pc_.n_chunks > 1:
                    add("pieces_split", 1)
                    add("split_chunks", pc_.n_chunks)
        add("marker_tokens", int((s.roles != core.CONTENT).sum()))

    def _sample(self, s, prefix: str, id_of, base_seed: int) -> dict:
        L = self.params.context_length
        return {"id": f"{prefix}{s.index:08d}", "sample_idx": s.index, "tokens": s.tokens[:L], "labels": s.tokens[1:],
                "loss_mask": core.loss_mask(s.roles) if s.knotted else np.ones(L, dtype=np.uint8),
                "position_ids": np.arange(L, dtype=np.int32), "utk_applied": s.knotted,
                "chunks": [{"doc_id": id_of(c["doc"]), "doc_idx": c["piece"], "chunk_idx": c["chunk_idx"],
                            "n_chunks": c["n_chunks"], "src_start": c["src_start"], "src_end": c["src_end"],
                            "out_start": c["out_start"], "chunk_label": c["label"]} for c in s.chunks],
                "seed": base_seed * 100_000 + s.index}

    def summarize_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        L = self.params.context_length
        n, knotted = sums.get("samples", 0), sums.get("knotted_samples", 0)
        split = sums.get("pieces_split", 0)
        out = {"samples": n, "knotted_samples": knotted, "knotted_share": knotted / n if n else 0.0,
               "pieces": sums.get("pieces", 0), "pieces_split": split,
               "chunks_per_split_piece": sums.get("split_chunks", 0) / split if split else 0.0,
               "pieces_per_knotted_sample": sums.get("knotted_pieces", 0) / knotted if knotted else 0.0,
               "content_tokens": sums.get("content_tokens", 0), "marker_tokens": sums.get("marker_tokens", 0),
               "documents_truncated": sums.get("documents_truncated", 0),
               "tokens_cut_from_truncated": sums.get("tokens_cut_from_truncated", 0),
               "documents_in": sums.get("documents_in", 0), "tokens_in": sums.get("tokens_in", 0),
               "tokens_after_last_sample": sums.get("tokens_in", 0) - sums.get("content_tokens", 0),
               "marker_token_share": sums.get("marker_tokens", 0) / max(1, n * (L + 1))}
        out |= {k: v for k, v in sorted(sums.items()) if k.startswith("knotted_pieces_in_")}
        return out

    def artifacts(self, ctx: GlobalContext) -> dict[str, pa.Table]:
        """The markers (a table, ``utk/markers.json``) and, with special tokens, the extended tokenizer
        a trainer must load (``utk/tokenizer.json``): the same for every stream, made once here."""
        tok, _, rows, _, meta = self._markers()
        if ctx.output_dir is not None:
            folder = Path(ctx.output_dir) / "utk"
            write_text_atomic(json.dumps(meta, indent=2, sort_keys=True) + "\n", folder / "markers.json")
            if self.params.markers == "special":
                write_text_atomic(tok.to_str(pretty=True), folder / "tokenizer.json")
        return {"markers": pa.Table.from_pylist(rows, schema=UTK_MARKER.arrow)}
