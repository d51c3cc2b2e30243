"""The accounting rule, written once: every record a stage received is out, rejected or dropped;
for a stage whose one input may make several outputs (a flat-map, a group, an expanding global
stage), every input that made an output counts once. The driver checks it on every run
(pipelines/engine/accounting.py) and the catalog stores its answer per stage
(``stage_stats.reconciles``)."""

from __future__ import annotations

# Shapes whose stages expand, as statistics recorded before the ``expands`` flag name them: only
# for filling in the answer of rows an older longforge wrote (``whole-dataset`` is gone since).
LEGACY_EXPANDING_SHAPES = ("per-record-expanding", "per-group", "global-expanding", "whole-dataset")


def reconciles(row: dict) -> bool:
    """``row``: a stage's statistics (``in``, ``out``, ``rejected``, ``dropped``,
    ``inputs_with_output``, ``expands``)."""
    produced = row["inputs_with_output"] if row.get("expands") else row["out"]
    return row["in"] == produced + row["rejected"] + row["dropped"]
