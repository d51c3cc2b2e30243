"""Per-group stages: records moved to the partition of their group on the workers, each group seen
whole and in the stage's order.

The segment before a group step writes each shard's records as ``parts-i.parquet`` (and no records
file, which nothing would read), with the group key, the place in the group and the row, sorted by
(partition, group, place, row), each partition in row groups of at most ``PART_ROWS`` rows (its
marker says which). Task ``p`` of the group step merges partition ``p`` of every shard as a stream,
one row group per shard in memory, and hands ``build`` each group's records as a stream in key
order; its records are written as they come. A worker holds one row group a shard (together about
``MERGE_BYTES``, whatever the number of shards) plus what the stage itself keeps (UtK: one
sample's documents), not the partition.
Partitions are the group step's shards: its records, removed records, side tables and markers have
the layout of a segment's, and a killed run redoes only the partitions without a marker.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Iterator
from operator import itemgetter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.engine.accounting import StageCounter, route_outcomes
from pipelines.engine.faults import mid_task
from pipelines.engine.layout import previous_records, read_marker, shard_files
from pipelines.engine.publish import bucket_of, write_row_group_runs
from pipelines.engine.shapes.base import Shape, ensure_setup, services
from pipelines.engine.shapes.record import finish_task
from pipelines.engine.steps import GroupStep, Plan, PlannedStage, Step
from schemas.tables import is_numeric_list, list_row_views, sort_rows
from stages.base import GroupStage

_GROUP, _ORDER, _ROW, _SHARD = "__group", "__order", "__row", "__shard"


#: Rows per row group of a parts file: what one shard contributes to a group task's merge at a time.
PART_ROWS = 2048
#: What a group task's merge holds of its input at once, over every shard: a parts row group is at
#: most this over the number of shards (and 8 MB), so more shards do not mean a larger merge.
MERGE_BYTES = 32 * 1024 * 1024
#: Rows turned into records at a time from a row group the merge holds.
_DECODE_ROWS = 256


def write_parts(plan: Plan, step: Step, i: int, rows: list[dict],
                table: pa.Table) -> tuple[dict[int, list[int]], float]:
    """On the worker: shard ``i``'s records (``rows``, and ``table``: the same as the step's
    schema) by partition of the next group stage, sorted by (partition, group, place, row), in row
    groups of at most :data:`PART_ROWS` rows. Returns (partition -> [first row group, count], seconds)."""
    t0 = time.perf_counter()
    stage: GroupStage = step.feeds.stage
    n = len(plan.shards)
    keys = [stage.group_of(r) for r in rows]
    table = (table.append_column(_GROUP, pa.array([k for k, _ in keys], pa.string()))
             .append_column(_ORDER, pa.array([o for _, o in keys], stage.place_type))
             .append_column(_ROW, pa.array(np.arange(len(rows)), pa.int64())))
    part = np.fromiter((bucket_of(k, n) for k, _ in keys), dtype=np.int64, count=len(keys))
    table = table.append_column("__part", pa.array(part, pa.int64()))
    table = sort_rows(table, [("__part", "ascending"), (_GROUP, "ascending"), (_ORDER, "ascending"),
                              (_ROW, "ascending")])
    part = table.column("__part").to_numpy()
    groups = write_row_group_runs(table.drop_columns(["__part"]), part, n, shard_files(plan, step, i)["parts"],
                                  PART_ROWS, part_bytes(n))
    return groups, time.perf_counter() - t0


def part_bytes(shards: int) -> int:
    """The size of a parts row group when a partition is merged from ``shards`` shards."""
    return max(256 * 1024, min(8 * 1024 * 1024, MERGE_BYTES // max(1, shards)))


def partition_row_groups(marker: dict | None, p: int) -> list[int]:
    """The row groups of a parts file that hold partition ``p`` (a marker of an older run names one)."""
    where = (marker or {}).get("parts", {}).get(str(p))
    if where is None:
        return []
    if isinstance(where, int):
        return [where]
    first, count = where
    return list(range(first, first + count))


def _shard_stream(path: Path, row_groups: list[int], shard: int, as_rows) -> Iterator[tuple[tuple, dict]]:
    """((group, place, shard, row), record) of one shard's part of a partition, a row group at a time."""
    pf = pq.ParquetFile(path)
    for g in row_groups:
        t = pf.read_row_group(g)
        keys, places, rows = (t.column(c).to_pylist() for c in (_GROUP, _ORDER, _ROW))
        t = t.drop_columns([_GROUP, _ORDER, _ROW])
        for lo in range(0, t.num_rows, _DECODE_ROWS):  # records made a slice at a time, not the row group
            records = as_rows(t.slice(lo, _DECODE_ROWS))
            for j, rec in enumerate(records, start=lo):
                yield (keys[j], places[j], shard, rows[j]), rec
        del t


def stream_partition(plan: Plan, step: Step, p: int, as_rows) -> Iterator[tuple[tuple, dict]]:
    """Partition ``p`` of every shard, in (group, place, shard, row) order: a merge of the shards'
    sorted parts, holding one row group of each shard at a time, never the partition."""
    prev = previous_records(plan, step)
    sources = []
    for i in range(len(plan.shards)):
        groups = partition_row_groups(read_marker(shard_files(plan, prev, i)["done"], prev.fingerprint), p)
        if groups:
            sources.append(_shard_stream(shard_files(plan, prev, i)["parts"], groups, i, as_rows))
    return heapq.merge(*sources, key=itemgetter(0))


class _GroupRecords:
    """One group's records as the stage reads them, counted as they are read."""

    def __init__(self, items: Iterator[tuple[tuple, dict]]):
        self.items, self.n = items, 0

    def __iter__(self) -> Iterator[dict]:
        for _, rec in self.items:
            self.n += 1
            yield rec


def build_groups(stage: GroupStage, label: str, stream: Iterator[tuple[tuple, dict]], counter: StageCounter,
                 removed: list[dict], sides: dict[str, list[dict]], metrics: dict[str, float]) -> Iterator[dict]:
    """Each group of a partition's stream through ``build``, which reads its records as a stream
    (a stage that needs its group whole makes the list itself)."""
    for g, (key, items) in enumerate(itertools.groupby(stream, key=lambda t: t[0][0])):
        records = _GroupRecords(items)
        lost = counter.rejected + counter.dropped
        yield from route_outcomes(label, _timed(stage.build(key, iter(records), metrics), counter), counter,
                                  removed, sides)
        left = sum(1 for _ in items)
        if left:
            raise RuntimeError(f"stage {label} did not read {left} records of group {key!r}: build must read "
                               "every record of its group")
        counter.n_in += records.n
        counter.inputs_with_output += records.n - (counter.rejected + counter.dropped - lost)
        mid_task(f"group:{label}:{g}")


def _timed(outcomes: Iterator, counter: StageCounter) -> Iterator:
    """The stage's outcomes, the time spent making them added to ``counter.seconds``."""
    while True:
        t0 = time.perf_counter()
        try:
            o = next(outcomes)
        except StopIteration:
            counter.seconds += time.perf_counter() - t0
            return
        counter.seconds += time.perf_counter() - t0
        yield o


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
    """Partition ``p`` of a group step: stream it from every shard's parts, build each group, and
    leave the partition's files and marker as a segment's shard would; records are written as they
    come, so the task holds a row group per shard and what the stage keeps, not the partition."""
    t0 = time.time()
    ps = step.central
    ensure_setup(ps.stage, services(plan))
    counter = StageCounter.of(step.index, ps)
    removed: list[dict] = []
    sides: dict[str, list[dict]] = {}
    as_rows = _rows_with_arrays if ps.stage.arrays else (lambda t: t.to_pylist())
    stream = stream_partition(plan, step, p, as_rows)
    rows = build_groups(ps.stage, ps.label, stream, counter, removed, sides, counter.metrics)
    return finish_task(plan, step, p, rows, [counter], removed, t0, None, sides)


class GroupShape(Shape):
    """A per-group stage: the task before writes its records by partition of their group; each
    task of the group step builds one partition's groups."""

    name = "per-group"
    expands_always = True
    large_tasks = True
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

    def feed_format(self, ps: PlannedStage) -> str | None:
        place = ps.stage.place_type
        forms = ([] if place == pa.int64() else [f"place:{place}"]) + [f for f in [ps.stage.place_form()] if f]
        return ";".join(forms) or None

    def feed_streamed(self) -> bool:
        return False  # the parts are sorted over the whole task: it feeds from the task's rows

    def feeds_records_file(self) -> bool:
        return False

    def run_task(self, plan: Plan, step: Step, i: int) -> dict:
        return run_group_partition(plan, step, i)

    def task_reads(self, plan: Plan, step: Step, i: int) -> tuple[list[Path], list[Path]]:
        """The parts files holding partition ``i`` (their markers say which; a remote worker
        fetches the markers first)."""
        prev = previous_records(plan, step)
        return [shard_files(plan, prev, k)["parts"] for k in range(len(plan.shards))
                if partition_row_groups(read_marker(shard_files(plan, prev, k)["done"], prev.fingerprint), i)], []

    def task_markers(self, plan: Plan, step: Step) -> list[Path]:
        prev = previous_records(plan, step)
        return [shard_files(plan, prev, k)["done"] for k in range(len(plan.shards))]

    def where(self, step: Step, on_workers: str) -> dict:
        return {"step": step.name, "shape": "per-group", "runs_on": on_workers + ", one partition "
                "of the groups per task", "driver_holds": ["completion markers (counts per partition)"]}
