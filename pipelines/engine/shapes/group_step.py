"""Per-group stages: records moved to the partition of their group on the workers, each group seen
whole and in the stage's order.

The segment before a group step writes each shard's records as ``parts-i.parquet`` (and no records
file, which nothing would read), with the group key, the place in the group and the row, sorted by
(partition, group, place, row) and one row group per partition (its marker says which). Task ``p``
of the group step reads partition ``p``'s row group of every shard, so a worker holds one partition
at a time, and calls ``build`` for each group in key order. Partitions are the group step's
shards: its records, removed records, side tables and markers have the layout of a segment's, and
a killed run redoes only the partitions without a marker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.engine.accounting import StageCounter, route_outcomes
from pipelines.engine.faults import mid_task
from pipelines.engine.layout import previous_records, read_marker, shard_files
from pipelines.engine.publish import bucket_of, write_row_groups
from pipelines.engine.shapes.base import Shape, ensure_setup, services
from pipelines.engine.shapes.record import finish_task
from pipelines.engine.steps import GroupStep, Plan, PlannedStage, Step
from schemas.tables import is_numeric_list, list_row_views, sort_rows
from stages.base import GroupStage

_GROUP, _ORDER, _ROW, _SHARD = "__group", "__order", "__row", "__shard"


def write_parts(plan: Plan, step: Step, i: int, rows: list[dict], table: pa.Table) -> tuple[dict[int, int], float]:
    """On the worker: shard ``i``'s records (``rows``, and ``table``: the same as the step's
    schema) by partition of the next group stage. Returns (partition -> row group, seconds)."""
    t0 = time.perf_counter()
    stage: GroupStage = step.feeds.stage
    n = len(plan.shards)
    keys = [stage.group_of(r) for r in rows]
    table = (table.append_column(_GROUP, pa.array([k for k, _ in keys], pa.string()))
             .append_column(_ORDER, pa.array([o for _, o in keys], pa.int64()))
             .append_column(_ROW, pa.array(np.arange(len(rows)), pa.int64())))
    part = np.fromiter((bucket_of(k, n) for k, _ in keys), dtype=np.int64, count=len(keys))
    table = table.append_column("__part", pa.array(part, pa.int64()))
    table = sort_rows(table, [("__part", "ascending"), (_GROUP, "ascending"), (_ORDER, "ascending"),
                              (_ROW, "ascending")])
    part = table.column("__part").to_numpy()
    groups = write_row_groups(table.drop_columns(["__part"]), part, n, shard_files(plan, step, i)["parts"])
    return groups, time.perf_counter() - t0


def gather(plan: Plan, step: Step, p: int) -> pa.Table:
    """Partition ``p`` of every shard, sorted by (group, place, shard, row): what one task sees."""
    prev = previous_records(plan, step)
    pieces = []
    for i in range(len(plan.shards)):
        marker = read_marker(shard_files(plan, prev, i)["done"], prev.fingerprint)
        g = (marker or {}).get("parts", {}).get(str(p))
        if g is not None:
            t = pq.ParquetFile(shard_files(plan, prev, i)["parts"]).read_row_group(g)
            pieces.append(t.append_column(_SHARD, pa.array([i] * t.num_rows, pa.int64())))
    if not pieces:
        return pa.table({})
    table = pa.concat_tables(pieces)
    return sort_rows(table, [(_GROUP, "ascending"), (_ORDER, "ascending"), (_SHARD, "ascending"),
                             (_ROW, "ascending")])


def build_groups(stage: GroupStage, label: str, table: pa.Table, counter: StageCounter, removed: list[dict],
                 sides: dict[str, list[dict]], metrics: dict[str, float]) -> Iterator[dict]:
    """Each group of a gathered partition through ``build``, one group in Python objects at a time."""
    if table.num_rows == 0:
        return
    keys = table.column(_GROUP)
    payload = table.drop_columns([_GROUP, _ORDER, _ROW, _SHARD])
    change = np.flatnonzero(pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1)).to_numpy(
        zero_copy_only=False)) + 1
    bounds = [0, *change.tolist(), table.num_rows]
    as_rows = _rows_with_arrays if stage.arrays else (lambda t: t.to_pylist())
    for g, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        records = as_rows(payload.slice(lo, hi - lo))
        t0 = time.perf_counter()
        outcomes = list(stage.build(keys[lo].as_py(), records, metrics))
        counter.seconds += time.perf_counter() - t0
        counter.n_in += len(records)
        lost = counter.rejected + counter.dropped
        yield from route_outcomes(label, outcomes, counter, removed, sides)
        counter.inputs_with_output += len(records) - (counter.rejected + counter.dropped - lost)
        mid_task(f"group:{label}:{g}")


def _rows_with_arrays(table: pa.Table) -> list[dict]:
    """``table.to_pylist()``, but numeric list fields without nulls as numpy views of the column's
    values: 19M token ids as Python ints cost seconds to make and seconds more to write back."""
    arrays = {name: list_row_views(col) for name, col in zip(table.column_names, table.columns, strict=True)
              if is_numeric_list(col.type) and col.null_count == 0}
    rows = table.drop_columns(list(arrays)).to_pylist()
    for name, values in arrays.items():
        for r, v in zip(rows, values, strict=True):
            r[name] = v
    return rows


def run_group_partition(plan: Plan, step: Step, p: int) -> dict:
    """Partition ``p`` of a group step: gather it from every shard, build each group, and leave
    the partition's files and marker as a segment's shard would."""
    t0 = time.time()
    ps = step.central
    ensure_setup(ps.stage, services(plan))
    counter = StageCounter.of(step.index, ps)
    removed: list[dict] = []
    sides: dict[str, list[dict]] = {}
    table = gather(plan, step, p)
    rows = list(build_groups(ps.stage, ps.label, table, counter, removed, sides, counter.metrics))
    return finish_task(plan, step, p, rows, [counter], removed, t0, None, sides)


class GroupShape(Shape):
    """A per-group stage: the task before writes its records by partition of their group; each
    task of the group step builds one partition's groups."""

    name = "per-group"
    expands_always = True
    partitions_can_feed = True
    summarizes_without_sums = True
    fed_with = "parts"

    def make_step(self, index: int, ps: PlannedStage) -> Step:
        return GroupStep(index, adapter=self, central=ps)

    def step_out_schema(self, ps: PlannedStage):
        return ps.output_schema

    def feed(self, plan: Plan, step: Step, i: int, rows: list[dict], table) -> tuple[float, dict]:
        parts, seconds = write_parts(plan, step, i, rows, table)
        return seconds, {"parts": {str(p): g for p, g in parts.items()}}

    def feeds_records_file(self) -> bool:
        return False

    def run_task(self, plan: Plan, step: Step, i: int) -> dict:
        return run_group_partition(plan, step, i)

    def task_reads(self, plan: Plan, step: Step, i: int) -> tuple[list[Path], list[Path]]:
        """The parts files holding partition ``i`` (their markers say which; a remote worker
        fetches the markers first)."""
        prev = previous_records(plan, step)
        return [shard_files(plan, prev, k)["parts"] for k in range(len(plan.shards))
                if str(i) in (read_marker(shard_files(plan, prev, k)["done"], prev.fingerprint) or {})
                .get("parts", {})], []

    def task_markers(self, plan: Plan, step: Step) -> list[Path]:
        prev = previous_records(plan, step)
        return [shard_files(plan, prev, k)["done"] for k in range(len(plan.shards))]

    def where(self, step: Step, on_workers: str) -> dict:
        return {"step": step.name, "shape": "per-group", "runs_on": on_workers + ", one partition "
                "of the groups per task", "driver_holds": ["completion markers (counts per partition)"]}
