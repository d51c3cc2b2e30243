"""ICP's quality figures: adjacent and in-context similarity against a random order, and the
character-n-gram filter of near-duplicate neighbours."""

from __future__ import annotations

import numpy as np

# -- quality -------------------------------------------------------------------------------------


def adjacent_similarity(emb: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Cosine similarity of each consecutive pair of documents in ``order``."""
    a, b = emb[order[:-1]], emb[order[1:]]
    return np.einsum("ij,ij->i", a, b)


def centre(emb: np.ndarray) -> np.ndarray:
    """Vectors minus their mean, L2-normalised again (removes the direction every document shares)."""
    c = emb - emb.mean(axis=0, keepdims=True)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def context_value(emb: np.ndarray, docs: list[int]) -> float | None:
    """Mean pairwise cosine similarity of a context's distinct documents (rows of ``emb``); None
    for a context with one document."""
    docs = sorted(set(docs))
    if len(docs) < 2:
        return None
    e = emb[docs]
    g = e @ e.T
    m = len(docs)
    return (g.sum() - np.trace(g)) / (m * (m - 1))


def mean_value(values) -> float:
    """The mean of per-context values (a list or an array of float32), NaN for none."""
    return float(np.mean(values)) if len(values) else float("nan")


def context_similarity(emb: np.ndarray, spans: list[list[dict]]) -> float:
    """:func:`context_value` averaged over the contexts with more than one document."""
    values = [v for ctx in spans if (v := context_value(emb, [s["doc"] for s in ctx])) is not None]
    return mean_value(values)


def char_ngram_jaccard(a: str, b: str, n: int = 3) -> float:
    sa = {a[i : i + n] for i in range(max(0, len(a) - n + 1))}
    sb = {b[i : i + n] for i in range(max(0, len(b) - n + 1))}
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def ngram_filter(order: np.ndarray, texts: list[str], threshold: float = 0.85, prefix: int = 100,
                 n: int = 3) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """[code] After ordering, drop a document whose first ``prefix`` characters have a character
    ``n``-gram Jaccard above ``threshold`` with the previously kept document's."""
    kept = []
    dropped = []
    last = None
    for d in order.tolist():
        if last is not None:
            j = char_ngram_jaccard(texts[d][:prefix], texts[last][:prefix], n)
            if j > threshold:
                dropped.append((d, last, j))
                continue
        kept.append(d)
        last = d
    return np.array(kept, dtype=np.int64), dropped
