"""Packing documents' token ids into fixed-length contexts, in a given order (ICP's contexts,
decomposition's concat-and-chunk)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# -- packing -----------------------------------------------------------------------------------


@dataclass
class Packed:
    input_ids: np.ndarray  # int32[n_contexts, L]
    spans: list[list[dict]]  # per context: {doc, start, end, doc_tok_offset}
    docs_in_tail: np.ndarray  # doc indexes found only in a dropped last context
    cut: tuple[int, int, int] | None = None  # (doc, tokens kept, tokens with EOS) of the doc the drop cuts


def pack(order: np.ndarray, tokens: list[np.ndarray], length: int, eos_id: int | None,
         drop_last: bool = True, pad_id: int = 0) -> Packed:
    """Concatenate documents in ``order`` (``eos_id`` after each) and cut windows of ``length``."""
    pieces = []
    bounds = []  # (doc, global_start, global_end)
    at = 0
    for d in order.tolist():
        t = tokens[d]
        if eos_id is not None:
            t = np.concatenate([t, np.array([eos_id], dtype=t.dtype)])
        pieces.append(t.astype(np.int32, copy=False))
        bounds.append((d, at, at + len(t)))
        at += len(t)
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    n_full = len(stream) // length
    n_ctx = n_full if drop_last else -(-len(stream) // length)
    ids = np.full((n_ctx, length), pad_id, dtype=np.int32)
    if n_ctx:
        flat = stream[: n_ctx * length]
        ids.reshape(-1)[: len(flat)] = flat
    spans: list[list[dict]] = [[] for _ in range(n_ctx)]
    tail = []
    cut = None
    limit = n_ctx * length
    for d, a, b in bounds:
        if a >= limit:
            tail.append(d)
            continue
        if b > limit:
            cut = (d, limit - a, b - a)
        c = a // length
        while c < n_ctx and c * length < b:
            lo, hi = max(a, c * length), min(b, (c + 1) * length)
            spans[c].append({"doc": d, "start": lo - c * length, "end": hi - c * length, "doc_tok_offset": lo - a})
            c += 1
    return Packed(ids, spans, np.array(tail, dtype=np.int64), cut)
