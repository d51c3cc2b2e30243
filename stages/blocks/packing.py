"""Packing documents' token ids into fixed-length contexts, in a given order (ICP's contexts,
decomposition's concat-and-chunk).

:class:`StreamPacker` takes the documents one at a time and gives each context as soon as it is
full, holding only the documents not yet inside a finished context (at most one context's worth of
tokens, plus one document longer than that): a group of any size packs in bounded memory.
:func:`pack` is the same packer over a whole order at once."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np


@dataclass
class Packed:
    input_ids: np.ndarray  # int32[n_contexts, L]
    spans: list[list[dict]]  # per context: {doc, start, end, doc_tok_offset}
    docs_in_tail: np.ndarray  # doc indexes found only in a dropped last context
    cut: tuple[int, int, int] | None = None  # (doc, tokens kept, tokens with EOS) of the doc the drop cuts


@dataclass
class Tail:
    """What :meth:`StreamPacker.finish` reports besides the last contexts."""

    docs: list  # docs found only past the last context (dropped by drop_last)
    cut: tuple | None  # (doc, tokens kept, tokens with EOS) of the doc the last kept context cuts
    straddling: int  # documents that appear in more than one context


class StreamPacker:
    """Concatenate documents (``eos_id`` after each) and cut windows of ``length`` as they fill.

    Document ``doc`` keys are the caller's (an index, an id); a context is ``(ids, spans)`` with
    ``ids`` an int32 row of ``length`` and ``spans`` in document order, each ``{doc, start, end,
    doc_tok_offset}`` within the context. With ``drop_last`` the last, shorter context is dropped
    and the documents only in it are reported by :meth:`finish`; without it that context is padded
    with ``pad_id``."""

    def __init__(self, length: int, eos_id: int | None, drop_last: bool = True, pad_id: int = 0) -> None:
        self.length, self.eos_id, self.drop_last, self.pad_id = length, eos_id, drop_last, pad_id
        self._pieces: list[np.ndarray] = []  # tokens not yet in a finished context
        self._buffered = 0
        self._end = 0  # global offset after the last token fed
        self._pending: deque[list] = deque()  # [doc, start, end, contexts seen in], in order
        self.contexts = 0
        self._straddling = 0

    def add(self, doc: Hashable, tokens: np.ndarray) -> list[tuple[np.ndarray, list[dict]]]:
        """Feed one document; returns the contexts it completed (often none)."""
        t = np.asarray(tokens)
        if self.eos_id is not None:
            t = np.concatenate([t, np.array([self.eos_id], dtype=t.dtype)])
        t = t.astype(np.int32, copy=False)
        self._pending.append([doc, self._end, self._end + len(t), 0])
        self._end += len(t)
        if len(t):
            self._pieces.append(t)
            self._buffered += len(t)
        if self._buffered < self.length:
            return []
        buf = np.concatenate(self._pieces)
        n = len(buf) // self.length
        out = [self._context(buf[k * self.length:(k + 1) * self.length].copy()) for k in range(n)]
        rest = buf[n * self.length:]
        self._pieces = [rest.copy()] if len(rest) else []
        self._buffered = len(rest)
        return out

    def finish(self) -> tuple[list[tuple[np.ndarray, list[dict]]], Tail]:
        """The last context (padded, unless ``drop_last``) and the documents past the kept ones."""
        last = []
        if self._buffered and not self.drop_last:
            row = np.full(self.length, self.pad_id, dtype=np.int32)
            row[: self._buffered] = np.concatenate(self._pieces)
            last.append(self._context(row))
        self._pieces, self._buffered = [], 0
        limit = self.contexts * self.length
        tail, cut = [], None
        for doc, a, b, seen in self._pending:
            if a >= limit:
                tail.append(doc)
                continue
            if b > limit:
                cut = (doc, limit - a, b - a)
            self._straddling += seen > 1
        self._pending.clear()
        return last, Tail(tail, cut, self._straddling)

    def _context(self, row: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        c, L = self.contexts, self.length
        lo_c, hi_c = c * L, (c + 1) * L
        spans = []
        for entry in self._pending:
            doc, a, b, _ = entry
            if a // L > c:
                break
            if lo_c < b:
                lo, hi = max(a, lo_c), min(b, hi_c)
                spans.append({"doc": doc, "start": lo - lo_c, "end": hi - lo_c, "doc_tok_offset": lo - a})
                entry[3] += 1
        while self._pending and self._pending[0][2] <= hi_c and self._pending[0][1] < hi_c:
            self._straddling += self._pending.popleft()[3] > 1
        self.contexts += 1
        return row, spans


def pack(order: np.ndarray, tokens: list[np.ndarray], length: int, eos_id: int | None,
         drop_last: bool = True, pad_id: int = 0) -> Packed:
    """Concatenate documents in ``order`` (``eos_id`` after each) and cut windows of ``length``."""
    packer = StreamPacker(length, eos_id, drop_last, pad_id)
    contexts = []
    for d in order.tolist():
        contexts += packer.add(d, tokens[d])
    last, tail = packer.finish()
    contexts += last
    ids = np.stack([row for row, _ in contexts]) if contexts else np.full((0, length), pad_id, dtype=np.int32)
    return Packed(ids, [spans for _, spans in contexts], np.array(tail.docs, dtype=np.int64), tail.cut)
