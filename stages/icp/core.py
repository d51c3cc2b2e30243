"""In-Context Pretraining on arrays (spec: ../shared/specs/icp.md), one namespace over its parts:
kNN (``knn``), the union graph (``graph``), semantic dedup (``dedup``), the greedy traversal (``walk``),
packing into contexts (``stages.blocks.packing``) and the quality metrics (``quality``).

Everything here is plain numpy (plus faiss for the search and numba for the walk), O(N*k) in time
and memory, with documents addressed by their row index 0..N-1; the stages map indexes to ids.
"""

from __future__ import annotations

from stages.blocks.packing import Packed, pack
from stages.icp.dedup import semantic_dedup
from stages.icp.graph import Graph, KnnLists, _bits_of, _desc_key, row_ranges, union_graph
from stages.icp.knn import KnnSettings, build_index, clean_neighbours, knn, recall_at
from stages.icp.quality import (
    adjacent_similarity,
    centre,
    char_ngram_jaccard,
    context_similarity,
    context_value,
    mean_value,
    ngram_filter,
)
from stages.icp.walk import (
    Walk,
    WalkSettings,
    greedy_walk,
    greedy_walk_python,
    merge_short_runs,
    relabel_runs,
    start_order,
)

__all__ = [
    "Graph",
    "KnnLists",
    "KnnSettings",
    "Packed",
    "Walk",
    "WalkSettings",
    "_bits_of",
    "_desc_key",
    "adjacent_similarity",
    "build_index",
    "centre",
    "char_ngram_jaccard",
    "clean_neighbours",
    "context_similarity",
    "context_value",
    "greedy_walk",
    "greedy_walk_python",
    "knn",
    "mean_value",
    "merge_short_runs",
    "ngram_filter",
    "pack",
    "recall_at",
    "relabel_runs",
    "row_ranges",
    "semantic_dedup",
    "start_order",
    "union_graph",
]
