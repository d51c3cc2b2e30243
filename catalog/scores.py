"""The one builder of the catalog's ``scores`` rows: per-sample columns (``sample_id``, ``metric``,
``value``, and any of the others that vary by row) joined with what is the same for every row of
an insert (the run, the job, the model, ...)."""

from __future__ import annotations

import pyarrow as pa

COLUMNS = {"sample_id": pa.string(), "artifact_id": pa.string(), "job": pa.string(), "model": pa.string(),
           "revision": pa.string(), "metric": pa.string(), "value": pa.float64(), "run_id": pa.string(),
           "settings": pa.string(), "content_hash": pa.string()}


def score_rows(per_row: pa.Table | dict, **same: str | None) -> pa.Table:
    """``per_row``: columns with one value per score (a table, or a dict of lists); ``same``: a
    column's one value for every row (``run_id=...``, ``job="eval"``). A column given neither way
    is left out (the catalog's default). Raises on a column the ``scores`` table does not have."""
    table = per_row if isinstance(per_row, pa.Table) else pa.table(per_row)
    unknown = sorted((set(table.column_names) | set(same)) - set(COLUMNS))
    if unknown:
        raise ValueError(f"the scores table has no column(s) {', '.join(unknown)}")
    n = table.num_rows
    columns = {}
    for name, type_ in COLUMNS.items():
        if name in table.column_names:
            columns[name] = table.column(name).cast(type_)
        elif name in same:
            columns[name] = pa.array([same[name]] * n, type_)
    return pa.table(columns)
