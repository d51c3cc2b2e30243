"""Reading UtK samples back: the document pieces of a sample from its tokens and labels alone
(knots, label headers, backtraces), and the documents a stream of samples holds whole. What a
trainer's loader or a test does to check a sample against its sources."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from stages.utk.core import Markers


class ParseError(ValueError):
    pass


@dataclass
class ParsedDoc:
    """One document piece found in a sample: its tokens in original order and where it was."""

    tokens: np.ndarray
    labels: list[tuple[int, ...]]  # chunk labels in original order (empty: not split)
    chunk_starts: list[int]  # output position of each chunk's content, in original order
    first_seen: int
    backtrace_at: int | None = None  # output position of its <S>
    last_chunk_end: int | None = None  # output position right after its last-appearing chunk (and knot)


def _match(s: np.ndarray, i: int, patterns) -> tuple[str, int, int] | None:
    for ids, kind, j in patterns:
        n = len(ids)
        if i + n <= len(s) and tuple(s[i:i + n].tolist()) == ids:
            return kind, j, n
    return None


def _chunk(s: np.ndarray, i: int, patterns, first_ids: set[int], eos_id: int, split: dict) -> int:
    """A labelled chunk from ``i`` (at its head knot or label header): its label, its content up to
    a knot or marker or through an EOS, and its tail knot; kept in ``split``. Returns where it ends."""
    n = len(s)
    chunk_pos = i
    kind, _, width = _match(s, i, patterns)
    if kind == "head":
        i += width
        m = _match(s, i, patterns)
        if m is None or m[0] != "label_open":
            raise ParseError(f"head knot at {chunk_pos} not followed by a label header")
        width = m[2]
    i += width
    a = i
    while i < n and _match(s, i, patterns) is None:
        i += 1
    if i >= n or _match(s, i, patterns)[0] != "label_close":
        raise ParseError(f"label header at {chunk_pos} is not closed")
    label = tuple(s[a:i].tolist())
    i += _match(s, i, patterns)[2]
    c0 = i
    while i < n:  # content: up to a knot or marker, or through an EOS
        if int(s[i]) in first_ids and _match(s, i, patterns) is not None:
            break
        i += 1
        if s[i - 1] == eos_id:
            break
    if label in split:
        raise ParseError(f"label {label} heads two chunks")
    split[label] = {"content": s[c0:i].copy(), "start": c0, "first": chunk_pos}
    m = _match(s, i, patterns) if i < n else None
    if m is not None and m[0] == "tail":
        i += m[2]
    split[label]["end"] = i
    return i


def _backtrace(s: np.ndarray, i: int, patterns, backtraces: list) -> int:
    """The backtrace from ``i``: the labels of one document's chunks in original order."""
    n = len(s)
    bt_pos = i
    i += _match(s, i, patterns)[2]
    seq: list[tuple[int, ...]] = []
    a = i
    while True:
        if i >= n:
            raise ParseError(f"backtrace at {bt_pos} is not closed")
        m = _match(s, i, patterns)
        if m is None:
            i += 1
            continue
        if m[0] not in ("bt_sep", "bt_close"):
            raise ParseError(f"unexpected {m[0]} inside the backtrace at {bt_pos}")
        seq.append(tuple(s[a:i].tolist()))
        i += m[2]
        a = i
        if m[0] == "bt_close":
            break
    backtraces.append((bt_pos, seq))
    return i


def _plain_run(s: np.ndarray, start: int, end: int, eos_id: int, plain: list, order: list) -> None:
    """Unmarked tokens ``start:end``: whole documents (through their EOS) and a last piece."""
    a = start
    for b in range(start, end):
        if s[b] == eos_id:
            plain.append(ParsedDoc(s[a:b + 1].copy(), [], [a], a))
            order.append(("plain", len(plain) - 1, a))
            a = b + 1
    if a < end:
        plain.append(ParsedDoc(s[a:end].copy(), [], [a], a))
        order.append(("plain", len(plain) - 1, a))


def _documents(plain: list, order: list, split: dict, backtraces: list, eos_id: int) -> list[ParsedDoc]:
    """Split documents joined by their backtraces; every piece in the order it first appears, the
    one piece without its EOS (cut at the sample's end) last."""
    docs: list[ParsedDoc] = list(plain)
    keyed: list[tuple[str, object, int]] = list(order)
    claimed: set[tuple[int, ...]] = set()
    for bt_pos, seq in backtraces:
        if any(x not in split for x in seq) or claimed & set(seq) or len(set(seq)) != len(seq):
            raise ParseError(f"backtrace at {bt_pos} names labels without exactly one header each")
        claimed |= set(seq)
        parts = [split[x] for x in seq]
        last = max(parts, key=lambda c: c["first"])
        docs.append(ParsedDoc(np.concatenate([c["content"] for c in parts]), list(seq), [c["start"] for c in parts],
                              min(c["first"] for c in parts), bt_pos, last["end"]))
        keyed.append(("split", len(docs) - 1, docs[-1].first_seen))
    if claimed != set(split):
        raise ParseError(f"chunks without a backtrace: {sorted(set(split) - claimed)}")
    ordered = [docs[k] if kind == "split" else plain[k] for kind, k, _ in sorted(keyed, key=lambda x: x[2])]
    finished = [d for d in ordered if len(d.tokens) and d.tokens[-1] == eos_id]
    unfinished = [d for d in ordered if not (len(d.tokens) and d.tokens[-1] == eos_id)]
    if len(unfinished) > 1:
        raise ParseError("more than one piece lacks its end-of-text token")
    return finished + unfinished


def parse_sample(tokens: np.ndarray, labels: np.ndarray, markers: Markers, eos_id: int) -> list[ParsedDoc]:
    """The document pieces of one output sample, from its tokens and labels alone: the piece that
    continues a document first, the one cut at the end last, the rest as they first appear."""
    s = np.concatenate([np.asarray(tokens), np.asarray(labels)[-1:]]).astype(np.int32)
    patterns = markers.patterns()
    first_ids = {ids[0] for ids, _, _ in patterns}
    plain: list[ParsedDoc] = []
    split: dict[tuple[int, ...], dict] = {}  # label -> {"content": ..., "start": ...}
    backtraces: list[tuple[int, list[tuple[int, ...]]]] = []
    order: list[tuple[str, object, int]] = []  # (kind, key, first position) of pieces as they appear
    run_start: int | None = None
    i, n = 0, len(s)
    while i < n:
        m = _match(s, i, patterns) if int(s[i]) in first_ids else None
        if m is None:
            run_start = i if run_start is None else run_start
            i += 1
            continue
        if run_start is not None:
            _plain_run(s, run_start, i, eos_id, plain, order)
            run_start = None
        if m[0] in ("head", "label_open"):
            i = _chunk(s, i, patterns, first_ids, eos_id, split)
        elif m[0] == "bt_open":
            i = _backtrace(s, i, patterns, backtraces)
        else:
            raise ParseError(f"stray {m[0]} marker at {i}")
    if run_start is not None:
        _plain_run(s, run_start, n, eos_id, plain, order)
    return _documents(plain, order, split, backtraces, eos_id)


def documents_from_samples(samples: Iterator[tuple[np.ndarray, np.ndarray]], markers: Markers,
                           eos_id: int) -> list[np.ndarray]:
    """Every document the samples hold whole, read back from tokens and labels: in sample order, and
    within a sample as first shown (knotting shuffles whole documents; their original order is gone)."""
    out: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    for tokens, labels in samples:
        for d in parse_sample(tokens, labels, markers, eos_id):
            pending.append(d.tokens)
            if len(d.tokens) and d.tokens[-1] == eos_id:
                out.append(np.concatenate(pending))
                pending = []
    return out
