"""The per-record shape: consecutive per-record stages fused into a segment, run shard by shard
on the workers (model stages batch by batch, checkpointed), and the files every worker task leaves
(:func:`finish_task`: records, removed records, side tables, what the next step reads, marker)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.engine.accounting import REMOVED_SCHEMA, StageCounter, removed_row, route_outcomes
from pipelines.engine.checkpoints import BatchCheckpoints
from pipelines.engine.faults import mid_task
from pipelines.engine.layout import (
    previous_records,
    shard_files,
    side_file,
    step_dir,
    step_side_tables,
)
from pipelines.engine.shapes.base import Shape, ensure_setup, services
from pipelines.engine.steps import Plan, PlannedStage, Step
from pipelines.storage.readers import read_shard
from schemas import cast_table
from schemas.files import BATCH_BYTES, atomic_parquet_writer, stream_batches, write_parquet_atomic, write_text_atomic
from stages.base import Rejected


class RecordShape(Shape):
    """Per-record stages (flat-maps too): fused into the segment they stand in."""

    name = "per-record"
    expanding_name = "per-record-expanding"
    fused = True

    def run_task(self, plan: Plan, step: Step, i: int) -> dict:
        return run_segment_shard(plan, step, i)

    def task_reads(self, plan: Plan, step: Step, i: int) -> tuple[list[Path], list[Path]]:
        prev = previous_records(plan, step)
        files = [shard_files(plan, prev, i)["records"]] if prev is not None else []
        gate = step.gate_step
        return files, [step_dir(plan, gate)] if gate is not None else []

    def where(self, step: Step, on_workers: str) -> dict:
        shape = "per-record" if not step.gate else f"{step.gate.shape} answer applied + per-record"
        return {"step": step.name, "shape": shape, "runs_on": on_workers,
                "driver_holds": ["completion markers (counts per shard)"]}


def _batches(records: Iterable[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for rec in records:
        batch.append(rec)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _computed_here(ps: PlannedStage, batches: Iterator[list[dict]], counter: StageCounter,
                   checkpoints: BatchCheckpoints | None) -> Iterator[tuple]:
    """(batch, results) in order, computed in this thread; with ``checkpoints`` (a model stage), a
    finished batch is read back, never computed again."""
    for k, batch in enumerate(batches):
        t0 = time.perf_counter()
        results = checkpoints.load(ps.label, k, batch) if checkpoints is not None else None
        if results is None:
            results = ps.stage.process_batch(batch)
            if checkpoints is not None:
                checkpoints.save(ps.label, k, batch, results)
                mid_task(f"batch:{ps.label}:{k}")
        counter.seconds += time.perf_counter() - t0
        yield batch, results


def _computed_ahead(stage, batches: Iterator[list[dict]], counter: StageCounter) -> Iterator[tuple]:
    """(batch, results) in order, batch k + 1 computed in a thread while the caller consumes batch
    k's records; the batches themselves are read here, in the caller's thread. ``counter.seconds``
    gets the time spent waiting for results, what the stage cost the step."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="longforge-ahead") as pool:
        pending = None
        for batch in batches:
            job = (batch, pool.submit(stage.process_batch, batch))
            if pending is not None:
                yield _wait(pending, counter)
            pending = job
        if pending is not None:
            yield _wait(pending, counter)


def _wait(job: tuple, counter: StageCounter) -> tuple:
    t0 = time.perf_counter()
    results = job[1].result()
    counter.seconds += time.perf_counter() - t0
    return job[0], results


def apply_record_stage(ps: PlannedStage, records: Iterable[dict], counter: StageCounter,
                       removed: list[dict], checkpoints: BatchCheckpoints | None = None,
                       sides: dict[str, list[dict]] | None = None) -> Iterator[dict]:
    """Run one per-record stage over a stream, in batches of the size it asks for, counting what it
    removes. A model stage's batches go through ``checkpoints``: a finished batch is read back, never
    computed again. Side-table rows go to ``sides`` (table -> rows)."""
    res = ps.stage.resources()
    batches = _batches(records, res.batch_size)
    computed = (_computed_ahead(ps.stage, batches, counter) if res.ahead and not res.model
                else _computed_here(ps, batches, counter, checkpoints if res.model else None))
    for batch, results in computed:
        for rec, outcomes in zip(batch, results, strict=True):
            counter.n_in += 1
            before = counter.n_out
            yield from route_outcomes(ps.label, outcomes, counter, removed, sides, source=rec)
            if counter.n_out > before:
                counter.inputs_with_output += 1


def shard_checkpoints(plan: Plan, step: Step, i: int) -> BatchCheckpoints:
    return BatchCheckpoints(step_dir(plan, step) / "batches" / f"shard-{i:05d}")


def iter_segment_input(plan: Plan, step: Step, i: int, counters: list[StageCounter],
                       removed: list[dict], sides: dict[str, list[dict]] | None = None) -> Iterator[dict]:
    """The records entering a segment's stages for shard ``i``: read input, or the records of the
    step before, with the drops (and columns) of the decide or global step between them applied."""
    prev = previous_records(plan, step)
    if prev is None:
        counter = StageCounter(step.index, "read", "per-record")
        counters.append(counter)
        for item in read_shard(plan.shards[i], plan.spec.inputs, plan.spec.read):
            counter.n_in += 1
            if isinstance(item, Rejected):
                counter.rejected += 1
                removed.append(removed_row("read", item))
            else:
                counter.n_out += 1
                yield item
        return
    records = ParquetRows(shard_files(plan, prev, i)["records"])
    if step.gate is None:
        yield from records
        return
    gate = step.gate_step
    counter = StageCounter.of(step.index, step.gate)
    counters.append(counter)
    yield from step.gate.adapter.apply(plan, gate, i, records, counter, removed, sides)


class ParquetRows:
    """The records of a work file as a stream of dicts, a batch at a time (a group step's
    partition can be larger than a worker's memory), that knows its length."""

    def __init__(self, path: Path):
        self.path = path
        self._n = pq.ParquetFile(path).metadata.num_rows

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[dict]:
        for batch in stream_batches(self.path):
            yield from batch.to_pylist()


def run_segment_shard(plan: Plan, step: Step, i: int) -> dict:
    """Process shard ``i`` of a segment step and leave its files and completion marker."""
    task = SegmentTask(plan, step, i)
    stream = task.records()
    for ps in step.stages:
        stream, _ = task.through(ps, stream)
    prev = previous_records(plan, step)
    return task.finish(stream if prev is not None and prev.adapter.large_tasks else list(stream))


class SegmentTask:
    """Task ``i`` of a segment step, split at its stages: :meth:`records` (the input, with the
    answer before applied), :meth:`through` (one stage), :meth:`finish` (the task's files and
    marker). :func:`run_segment_shard` chains them; an engine that composes steps itself (datatrove)
    calls them from its own steps."""

    def __init__(self, plan: Plan, step: Step, i: int):
        self.plan, self.step, self.i = plan, step, i
        self.counters: list[StageCounter] = []
        self.removed: list[dict] = []
        self.sides: dict[str, list[dict]] = {}
        self.checkpoints = shard_checkpoints(plan, step, i)
        self.t0 = time.time()

    def records(self) -> Iterator[dict]:
        return iter_segment_input(self.plan, self.step, self.i, self.counters, self.removed, self.sides)

    def through(self, ps: PlannedStage, records: Iterable[dict]) -> tuple[Iterator[dict], StageCounter]:
        ensure_setup(ps.stage, services(self.plan))
        counter = StageCounter.of(self.step.index, ps)
        self.counters.append(counter)
        return apply_record_stage(ps, records, counter, self.removed, self.checkpoints, self.sides), counter

    def finish(self, rows: Iterable[dict]) -> dict:
        return finish_task(self.plan, self.step, self.i, rows, self.counters, self.removed, self.t0,
                           self.checkpoints.tally(), self.sides)


#: Records per write of a task whose records come as a stream (a group step's partition), at most;
#: fewer when they weigh more than ``BATCH_BYTES`` together.
WRITE_ROWS = 1024


def finish_task(plan: Plan, step: Step, i: int, rows: Iterable[dict], counters: list[StageCounter],
                removed: list[dict], t0: float, batches: dict | None = None,
                sides: dict[str, list[dict]] | None = None) -> dict:
    """Write a shard's records, removed records, side-table rows and what the next step reads
    (keys, summaries or parts), then its completion marker (last). ``rows`` as a list (a segment's
    shard) is written at once; as a stream (a group step's partition) it is written
    :data:`WRITE_ROWS` at a time, and what the next step reads is made from the file, a batch at
    a time, where that step's shape allows (a global stage's summaries)."""
    files = shard_files(plan, step, i)
    feeds = step.feeds
    fed_counters: list[StageCounter] = []  # ``counters`` is read at the end: a stream adds to it as it is read
    extra: dict = {}
    if isinstance(rows, list) or (feeds is not None and not feeds.adapter.feed_streamed()):
        rows = list(rows)
        table = cast_table(rows, step.out_schema.arrow)
        if feeds is None or feeds.adapter.feeds_records_file():  # a group step reads its parts, not these
            write_parquet_atomic(table, files["records"], compression="lz4")
        n_rows = len(rows)
    else:
        n_rows, label_counts = _write_stream(plan, step, rows, files["records"])
        if label_counts is not None:
            extra["labels"] = label_counts
        rows = table = None
    _write_sides_and_removed(plan, step, i, sides, removed)
    if feeds is not None:
        ensure_setup(feeds.stage, services(plan))
        if rows is None:
            seconds, more = feeds.adapter.feed_file(plan, step, i, files["records"])
        else:
            seconds, more = feeds.adapter.feed(plan, step, i, rows, table)
        extra.update(more)
        fed = feeds.adapter.fed_counter(feeds, step.feeds_counted_at, n_rows)
        fed.seconds = seconds
        fed_counters.append(fed)
    if feeds is not None and feeds.adapter.feed_format(feeds) is not None:
        extra["feed_format"] = feeds.adapter.feed_format(feeds)
    if rows is not None and _counts_labels(plan, step):
        extra["labels"] = _label_counts(plan, rows)
    # pid: which process ran the shard (a Beam or pool worker, or the driver), for the record.
    # peak_rss_mb: the process's peak resident memory so far (VmHWM), for the memory benchmarks.
    marker = {"fingerprint": step.fingerprint, "shard": i, "records": n_rows, "pid": os.getpid(),
              "peak_rss_mb": _peak_rss_mb(),
              "run_id": plan.run_id,
              "batches": batches or {}, **extra,
              "metrics": {c.stage: c.metrics for c in [*counters, *fed_counters] if c.metrics},
              "stats": [c.to_json() for c in [*counters, *fed_counters]], "seconds": round(time.time() - t0, 3)}
    write_text_atomic(json.dumps(marker), files["done"])
    shutil.rmtree(shard_checkpoints(plan, step, i).folder, ignore_errors=True)  # the shard's files hold them now
    return marker


def _write_sides_and_removed(plan: Plan, step: Step, i: int, sides: dict | None, removed: list[dict]) -> None:
    for name, schema in step_side_tables(step).items():
        write_parquet_atomic(cast_table((sides or {}).get(name, []), schema.arrow), side_file(plan, step, name, i),
                             compression="zstd")
    write_parquet_atomic(pa.Table.from_pylist(removed, schema=REMOVED_SCHEMA), shard_files(plan, step, i)["removed"],
                         compression="lz4")


def _counts_labels(plan: Plan, step: Step) -> bool:
    """Whether this task's marker counts its records per output-file label (the final step's, when
    a stage labels the output files)."""
    return step is plan.record_steps[-1] and plan.file_labeller is not None


def _label_counts(plan: Plan, rows: list[dict], into: dict[str, int] | None = None) -> dict[str, int]:
    from pipelines.engine.publish import file_labels

    counts: dict[str, int] = defaultdict(int, into or {})
    field = plan.file_labeller.stage.file_label_field
    for label in file_labels(plan, pa.table({field: [r[field] for r in rows]})):
        counts[label] += 1
    return dict(sorted(counts.items()))


def _write_stream(plan: Plan, step: Step, rows: Iterable[dict], path: Path) -> tuple[int, dict | None]:
    """A stream of records into ``path``, :data:`WRITE_ROWS` at a time, under a temporary name
    renamed when complete. Returns (records, per-label counts or None)."""
    schema = step.out_schema.arrow
    n, labels = 0, ({} if _counts_labels(plan, step) else None)
    with atomic_parquet_writer(path, schema) as w:
        batch: list[dict] = []
        weight = 0
        for row in rows:
            batch.append(row)
            weight += _row_bytes(row)
            if len(batch) == WRITE_ROWS or weight >= BATCH_BYTES:
                w.write_table(cast_table(batch, schema))
                n += len(batch)
                labels = _label_counts(plan, batch, labels) if labels is not None else None
                batch, weight = [], 0
        if batch or n == 0:
            w.write_table(cast_table(batch, schema))
            n += len(batch)
            labels = _label_counts(plan, batch, labels) if labels is not None and batch else labels
    return n, labels


def _peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _row_bytes(row: dict) -> int:
    """About what a record weighs decoded: its strings' and lists' lengths (4 bytes an item)."""
    total = 0
    for v in row.values():
        if isinstance(v, (str, bytes)):
            total += len(v)
        elif hasattr(v, "__len__"):
            total += 4 * len(v)
        else:
            total += 8
    return total
