"""Untie the Knots (Tian et al., ACL 2025; spec ../shared/specs/untie-the-knots.md): the algorithm
on token arrays, with no engine or Arrow in sight, and the parser that undoes it.

A stream of documents (each ending with EOS) is packed into samples of exactly ``L + 1`` tokens
(``tokens = s[:-1]``, ``labels = s[1:]``). With probability ``p`` a sample is *knotted*: each
document piece in it is cut into ``h`` chunks (h drawn from the odds), every chunk gets a label
header ``<D> label </D>``, chunk j > 1 a head knot ``<h_j>`` before it and chunk j < h a tail knot
``<t_j>`` after it; all chunks are shuffled with each document's order preserved, and the
backtrace ``<S> label_1 <s> label_2 ... </S>`` follows each split document's last chunk. Unlike
the reference code, which inserts the markers and then truncates (cutting a backtrace), the
packer counts the markers in: a knotted sample takes fewer content tokens, never more than fit.

A chunk on the wire::

    [<h_j>] <D> label_j </D> content_j [<t_j>]      ... then, after the last one, <S> l1 <s> l2 </S>

Pieces that continue a document from the previous sample are pinned first, a piece cut at the
sample's end is pinned last (its backtrace after it), so that documents read back across samples.
"""

from __future__ import annotations

import string
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

# Roles of the positions of a sample: what the loss mask and the parser are built from.
CONTENT, KNOT, HEADER, BT_OPEN, BT_SEP, BT_LABEL, BT_CLOSE = range(7)

LABEL_ALPHABET = np.array(list(string.ascii_letters + string.digits))


@dataclass(frozen=True)
class Markers:
    """Token ids of every marker: one id each as special tokens, a few each rendered as text."""

    head: dict[int, tuple[int, ...]]  # j = 2..max_h -> <h_j>
    tail: dict[int, tuple[int, ...]]  # j = 1..max_h-1 -> <t_j>
    label_open: tuple[int, ...]  # <D>
    label_close: tuple[int, ...]  # </D>
    bt_open: tuple[int, ...]  # <S>
    bt_sep: tuple[int, ...]  # <s>
    bt_close: tuple[int, ...]  # </S>

    def patterns(self) -> list[tuple[tuple[int, ...], str, int]]:
        """(ids, kind, j) of every marker, longest first, so a longer marker wins a shared prefix."""
        items = [(v, "head", j) for j, v in self.head.items()] + [(v, "tail", j) for j, v in self.tail.items()]
        items += [(self.label_open, "label_open", 0), (self.label_close, "label_close", 0),
                  (self.bt_open, "bt_open", 0), (self.bt_sep, "bt_sep", 0), (self.bt_close, "bt_close", 0)]
        return sorted(items, key=lambda x: -len(x[0]))

    def all_ids(self) -> set[int]:
        return {i for ids, _, _ in self.patterns() for i in ids}


@dataclass(frozen=True)
class KnotConfig:
    length: int  # L: tokens (and labels) per sample; a sample holds L + 1 tokens
    p: float = 0.8  # share of samples knotted [paper: 0.8 for the released models, 0.3 "low"]
    chunk_odds: dict[int, float] = field(default_factory=lambda: {2: 0.5, 3: 0.5})  # h -> odds
    min_split: int = 64  # pieces shorter than this stay whole [paper; value UNVERIFIED]
    label_chars: int = 6  # [code: 6 characters of A-Za-z0-9]
    preserve_order: bool = True  # [paper: needed; code default False]
    seed: int = 47  # sample i draws from MT19937(seed * 100000 + i) [code]


@dataclass
class Piece:
    """The part of one document inside one sample."""

    doc: int  # index into the document list
    start: int  # token offset in the document
    end: int
    labels: list[str] = field(default_factory=list)  # one per chunk; empty when not split
    label_ids: list[tuple[int, ...]] = field(default_factory=list)
    cuts: list[int] = field(default_factory=list)  # chunk boundaries, relative to start

    @property
    def n_chunks(self) -> int:
        return max(1, len(self.labels))


@dataclass
class Sample:
    index: int
    knotted: bool
    tokens: np.ndarray  # int32[L + 1]
    roles: np.ndarray  # int8[L + 1]
    pieces: list[Piece]
    chunks: list[dict]  # per chunk in output order: doc, chunk_idx, n_chunks, src_start, src_end, out_start, label


def sample_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.Generator(np.random.MT19937(seed * 100_000 + index))


def marker_overhead(markers: Markers, label_ids: Sequence[tuple[int, ...]]) -> int:
    """Tokens the markers of one document split into ``len(label_ids)`` chunks add."""
    h = len(label_ids)
    if h <= 1:
        return 0
    labels = sum(len(x) for x in label_ids)
    headers = h * (len(markers.label_open) + len(markers.label_close)) + labels
    knots = sum(len(markers.head[j]) for j in range(2, h + 1)) + sum(len(markers.tail[j]) for j in range(1, h))
    backtrace = len(markers.bt_open) + labels + (h - 1) * len(markers.bt_sep) + len(markers.bt_close)
    return headers + knots + backtrace


class LabelTokenizer:
    """Labels tokenised in isolation (never merged with neighbouring text). Random labels of six
    characters almost never repeat, so a cache of every label only grew with the stream (about
    100 bytes a chunk): at most :data:`CACHE` recent ones are kept, for short labels that do."""

    CACHE = 4096

    def __init__(self, encode):
        self._encode = encode
        self._cache: dict[str, tuple[int, ...]] = {}

    def __call__(self, label: str) -> tuple[int, ...]:
        ids = self._cache.get(label)
        if ids is None:
            ids = tuple(self._encode(label))
            if len(self._cache) >= self.CACHE:
                self._cache.clear()
            self._cache[label] = ids
        return ids


def draw_labels(rng: np.random.Generator, h: int, n_chars: int, used: set[str]) -> list[str]:
    """``h`` fresh labels, unique within the sample (62^6 makes a redraw rare; it is counted)."""
    out = []
    while len(out) < h:
        label = "".join(LABEL_ALPHABET[rng.integers(0, len(LABEL_ALPHABET), n_chars)])
        if label not in used:
            used.add(label)
            out.append(label)
    return out


class DocStream:
    """A stream's documents by their index, read from ``items`` ((id, token ids) pairs) only when
    asked for, and forgotten once :meth:`release` says no sample needs them: packing holds the
    documents of one sample, not the stream."""

    def __init__(self, items: Iterable[tuple[str, np.ndarray]]):
        self._items = iter(items)
        self._base = 0
        self._docs: deque[np.ndarray] = deque()
        self._ids: deque[str] = deque()

    def has(self, k: int) -> bool:
        while k >= self._base + len(self._docs):
            nxt = next(self._items, None)
            if nxt is None:
                return False
            self._ids.append(nxt[0])
            self._docs.append(nxt[1])
        return True

    def __getitem__(self, k: int) -> np.ndarray:
        if k < self._base or not self.has(k):
            raise IndexError(f"document {k} is not in the window ({self._base}..)")
        return self._docs[k - self._base]

    def id_of(self, k: int) -> str:
        self[k]
        return self._ids[k - self._base]

    def release(self, k: int) -> None:
        """Documents before ``k`` are no longer needed."""
        while self._base < k and self._docs:
            self._docs.popleft()
            self._ids.popleft()
            self._base += 1


def pack_samples(docs: Sequence[np.ndarray] | DocStream, cfg: KnotConfig, markers: Markers,
                 label_tokens: LabelTokenizer) -> Iterator[Sample]:
    """Samples of exactly L + 1 tokens from the documents in order; an incomplete last one is not
    yielded (its tokens are the caller's to count). ``docs`` as a :class:`DocStream` is read as the
    samples need it, and each sample's finished documents are released after it is yielded."""
    if not isinstance(docs, DocStream):
        docs = DocStream((str(k), d) for k, d in enumerate(docs))
    hs = np.array(sorted(cfg.chunk_odds), dtype=np.int64)
    odds = np.array([cfg.chunk_odds[h] for h in hs], dtype=np.float64)
    odds = odds / odds.sum()
    k, off, index = 0, 0, 0
    while docs.has(k):
        rng = sample_rng(cfg.seed, index)
        knotted = bool(rng.random() < cfg.p)
        cap = cfg.length + 1
        pieces: list[Piece] = []
        used: set[str] = set()
        start_off = off
        while cap > 0 and docs.has(k):
            avail = len(docs[k]) - off
            piece = Piece(k, off, off)
            take = min(avail, cap)
            if knotted:
                h = int(rng.choice(hs, p=odds))
                if h > 1:
                    labels = draw_labels(rng, h, cfg.label_chars, used)
                    ids = [label_tokens(x) for x in labels]
                    over = marker_overhead(markers, ids)
                    split_take = min(avail, cap - over)
                    if split_take >= max(cfg.min_split, h):
                        cuts = np.sort(rng.choice(split_take - 1, h - 1, replace=False) + 1).tolist()
                        piece.labels, piece.label_ids, piece.cuts = labels, ids, cuts
                        take = split_take
                        cap -= over
            piece.end = off + take
            cap -= take
            pieces.append(piece)
            off += take
            if off == len(docs[k]):
                k, off = k + 1, 0
        if cap > 0:
            return  # the stream ran out: an incomplete sample
        continues = start_off > 0
        cut = pieces[-1].end < len(docs[pieces[-1].doc])
        if knotted:
            yield assemble(index, docs, pieces, markers, rng, cfg.preserve_order, continues, cut)
        else:
            tokens = np.concatenate([docs[p.doc][p.start:p.end] for p in pieces]).astype(np.int32, copy=False)
            chunks = []
            at = 0
            for i, p in enumerate(pieces):
                chunks.append({"doc": p.doc, "piece": i, "chunk_idx": 0, "n_chunks": 1, "src_start": p.start,
                               "src_end": p.end, "out_start": at, "label": None})
                at += p.end - p.start
            yield Sample(index, False, tokens, np.zeros(len(tokens), dtype=np.int8), pieces, chunks)
        docs.release(k)  # the next sample starts at document k
        index += 1


def assemble(index: int, docs: Sequence[np.ndarray], pieces: list[Piece], markers: Markers,
             rng: np.random.Generator, preserve_order: bool, continues: bool, cut: bool) -> Sample:
    """Shuffle the chunks of a knotted sample and lay them out with their markers."""
    chunk_list = [(i, j) for i, p in enumerate(pieces) for j in range(p.n_chunks)]
    n = len(chunk_list)
    pinned: dict[tuple[int, int], int] = {}
    if continues:
        pinned[(0, 0)] = 0
    if cut:
        last = len(pieces) - 1
        pinned[(last, pieces[last].n_chunks - 1)] = n - 1
    free_chunks = [c for c in chunk_list if c not in pinned]
    free_slots = [s for s in range(n) if s not in pinned.values()]
    slots = dict(pinned)
    for c, s in zip(free_chunks, rng.permutation(free_slots).tolist(), strict=True):
        slots[c] = s
    if preserve_order:  # each document's chunks take its slots in order (paper: PreserveOrder)
        for i, p in enumerate(pieces):
            own = sorted(slots[(i, j)] for j in range(p.n_chunks))
            for j, s in enumerate(own):
                slots[(i, j)] = s
    order = sorted(chunk_list, key=slots.__getitem__)
    last_shown = {}
    for c in order:
        last_shown[c[0]] = c  # the chunk of each piece that appears last: its backtrace follows
    parts: list[np.ndarray] = []
    roles: list[np.ndarray] = []
    chunks = []
    at = 0

    def put(ids, role):
        nonlocal at
        arr = np.asarray(ids, dtype=np.int32)
        parts.append(arr)
        roles.append(np.full(len(arr), role, dtype=np.int8))
        at += len(arr)

    for i, j in order:
        p = pieces[i]
        bounds = [0, *p.cuts, p.end - p.start]
        src_start, src_end = p.start + bounds[j], p.start + bounds[j + 1]
        h = p.n_chunks
        if h > 1:
            if j > 0:
                put(markers.head[j + 1], KNOT)
            put(markers.label_open, HEADER)
            put(p.label_ids[j], HEADER)
            put(markers.label_close, HEADER)
        chunks.append({"doc": p.doc, "piece": i, "chunk_idx": j, "n_chunks": h, "src_start": src_start,
                       "src_end": src_end, "out_start": at, "label": p.labels[j] if h > 1 else None})
        put(docs[p.doc][src_start:src_end], CONTENT)
        if h > 1 and j < h - 1:
            put(markers.tail[j + 1], KNOT)
        if h > 1 and last_shown[i] == (i, j):
            put(markers.bt_open, BT_OPEN)
            for q, ids in enumerate(p.label_ids):
                if q:
                    put(markers.bt_sep, BT_SEP)
                put(ids, BT_LABEL)
            put(markers.bt_close, BT_CLOSE)
    return Sample(index, True, np.concatenate(parts), np.concatenate(roles), pieces, chunks)


def loss_mask(roles: np.ndarray) -> np.ndarray:
    """uint8[L]: spec step 8, unconditionally. Zero where the input or the label is a knot, on the
    whole label header and where the label starts one, where the label is <S> (when to start a
    backtrace is not asked) and where the input is </S>. Labels, separators and </S> inside the
    backtrace are trained; plain samples are all ones."""
    r_in, r_lab = roles[:-1], roles[1:]
    masked = (np.isin(r_in, (KNOT, HEADER, BT_CLOSE)) | np.isin(r_lab, (KNOT, HEADER, BT_OPEN)))
    return (~masked).astype(np.uint8)
