"""Runner-independent execution of plan steps: the work of one shard of a segment, of one
partition of a group step, the driver's global and decide steps, and what the run adds up at the
end. Every runner calls :func:`run_task` for its tasks, so every runner produces the same bytes.

Concepts live in modules of their own: :mod:`pipelines.layout` (where work is kept),
:mod:`pipelines.accounting` (counters, removed records), :mod:`pipelines.checkpoints` (a model
stage's batches), :mod:`pipelines.decide`, :mod:`pipelines.global_step`, :mod:`pipelines.group_step`
(the three shapes besides per-record) and :mod:`pipelines.publish` (output files, fingerprints).
"""

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

from pipelines import global_step, group_step
from pipelines.accounting import REMOVED_SCHEMA, StageCounter, merge_stats, removed_row, route_outcomes
from pipelines.checkpoints import BatchCheckpoints
from pipelines.decide import load_decisions, write_keys
from pipelines.io import read_shard
from pipelines.layout import (
    duckdb_config,
    gate_step_before,
    generation_cache_dir,
    previous_records,
    read_marker,
    shard_files,
    side_file,
    step_dir,
    step_side_tables,
)
from pipelines.plan import Plan, PlannedStage, Step, StepKind
from schemas import cast_table
from schemas.files import write_parquet_atomic, write_text_atomic
from stages.base import CollectionStage, Dropped, GlobalStage, GroupStage, Rejected, Services


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


# -- segments --------------------------------------------------------------------------------------


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
    records = pq.read_table(shard_files(plan, prev, i)["records"]).to_pylist()
    if step.gate is None:
        yield from records
        return
    gate = gate_step_before(plan, step)
    counter = StageCounter(step.index, step.gate.label, step.gate.shape)
    counters.append(counter)
    if gate.kind is StepKind.GLOBAL:
        yield from _apply_global(plan, gate, i, records, counter, removed, sides)
        return
    decisions = load_decisions(plan, gate, i)
    for row, rec in enumerate(records):
        counter.n_in += 1
        d = decisions.get(row)
        if d is None:
            counter.n_out += 1
            yield rec
        else:
            counter.dropped += 1
            removed.append({"stage": step.gate.label, "record_id": rec["id"], "reason": d[0],
                            "detail": d[1], "kind": "dropped", "payload": None})
    counter.inputs_with_output = counter.n_out


def _apply_global(plan: Plan, gate: Step, i: int, records: list[dict], counter: StageCounter,
                  removed: list[dict], sides: dict[str, list[dict]] | None) -> Iterator[dict]:
    """A global step's answer for shard ``i``, record by record through the stage's ``apply``."""
    decisions, added = global_step.load_answer(plan, gate, i)
    if len(added) != len(records):
        raise RuntimeError(f"{gate.name} answered {len(added)} rows for shard {i}'s {len(records)} records")
    ps = gate.central
    for row, rec in enumerate(records):
        d = decisions.get(row)
        dropped = Dropped(rec["id"], d[0], d[1]) if d is not None else None
        counter.n_in += 1
        before = counter.n_out
        yield from route_outcomes(ps.label, ps.stage.apply(rec, added[row], dropped), counter, removed, sides)
        if counter.n_out > before:
            counter.inputs_with_output += 1


def run_segment_shard(plan: Plan, step: Step, i: int) -> dict:
    """Process shard ``i`` of a segment step and leave its files and completion marker."""
    t0 = time.time()
    counters: list[StageCounter] = []
    removed: list[dict] = []
    sides: dict[str, list[dict]] = {}
    stream = iter_segment_input(plan, step, i, counters, removed, sides)
    checkpoints = shard_checkpoints(plan, step, i)
    for ps in step.stages:
        counter = StageCounter(step.index, ps.label, ps.shape)
        counters.append(counter)
        ensure_setup(ps.stage, services(plan))
        stream = apply_record_stage(ps, stream, counter, removed, checkpoints, sides)
    return finish_segment_shard(plan, step, i, list(stream), counters, removed, t0, checkpoints.tally(), sides)


def run_group_partition(plan: Plan, step: Step, p: int) -> dict:
    """Partition ``p`` of a group step: gather it from every shard, build each group, and leave
    the partition's files and marker as a segment's shard would."""
    t0 = time.time()
    ps = step.central
    ensure_setup(ps.stage, services(plan))
    counter = StageCounter(step.index, ps.label, ps.shape)
    removed: list[dict] = []
    sides: dict[str, list[dict]] = {}
    table = group_step.gather(plan, step, p)
    rows = list(group_step.build_groups(ps.stage, ps.label, table, counter, removed, sides, counter.metrics))
    return finish_segment_shard(plan, step, p, rows, [counter], removed, t0, None, sides)


def run_task(plan: Plan, step: Step, i: int) -> dict:
    """Task ``i`` of a step that runs on the workers: a segment's shard or a group step's partition."""
    marker = run_group_partition(plan, step, i) if step.kind is StepKind.GROUP else run_segment_shard(plan, step, i)
    fault_point(f"{step.kind.value}:{step.index}:{i}")
    return marker


def fault_point(where: str) -> None:
    """Testing hooks, at ``<kind>:<step>:<task>`` (``global:3:0`` for a driver step), right after
    that piece of work is finished: ``LONGFORGE_KILL_AT`` SIGKILLs this process, so tests can show
    what a rerun after a crash redoes; ``LONGFORGE_PAUSE_AT`` makes it wait there (at most 10
    minutes) for the signal a test sends, so a Ctrl-C lands mid-run however loaded the machine is.
    Unset, they do nothing."""
    if os.environ.get("LONGFORGE_KILL_AT") == where:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("LONGFORGE_PAUSE_AT") == where:
        time.sleep(600)


def collect_resume(plan: Plan) -> dict[str, int]:
    """What this run did and what it found finished by an earlier run (by the run ids in the
    markers): tasks (shards, partitions) and driver steps (decide, global)."""
    out = {"tasks_run": 0, "tasks_reused": 0, "driver_steps_run": 0, "driver_steps_reused": 0}
    for step in plan.steps:
        if step.kind in (StepKind.SEGMENT, StepKind.GROUP):
            markers = [read_marker(shard_files(plan, step, i)["done"], step.fingerprint)
                       for i in range(len(plan.shards))]
            kind = "tasks"
        elif step.kind in (StepKind.DECIDE, StepKind.GLOBAL):
            markers = [read_marker(step_dir(plan, step) / "done.json", step.fingerprint)]
            kind = "driver_steps"
        else:
            continue
        for m in markers:
            if m is not None:
                out[f"{kind}_run" if m.get("run_id") == plan.run_id else f"{kind}_reused"] += 1
    return out


def services(plan: Plan) -> Services:
    """What the engine hands the stages of this plan wherever they run."""
    return Services(generation_cache=generation_cache_dir(plan), output_dir=Path(plan.output_dir))


def ensure_setup(stage, given: Services | None = None) -> None:
    if not getattr(stage, "_longforge_ready", False):
        if given is not None:
            stage.services = given
        stage.setup()
        stage._longforge_ready = True


def finish_segment_shard(plan: Plan, step: Step, i: int, rows: list[dict], counters: list[StageCounter],
                         removed: list[dict], t0: float, batches: dict | None = None,
                         sides: dict[str, list[dict]] | None = None) -> dict:
    """Write a shard's records, removed records, side-table rows and what the next step reads
    (keys, summaries or parts), then its completion marker (last)."""
    files = shard_files(plan, step, i)
    for name, schema in step_side_tables(step).items():
        write_parquet_atomic(cast_table((sides or {}).get(name, []), schema.arrow), side_file(plan, step, name, i),
                             compression="zstd")
    feeds = step.feeds.stage if step.feeds is not None else None
    table = cast_table(rows, step.out_schema.arrow)
    if not isinstance(feeds, GroupStage):  # a group step reads its parts, never these records
        write_parquet_atomic(table, files["records"], compression="lz4")
    write_parquet_atomic(pa.Table.from_pylist(removed, schema=REMOVED_SCHEMA), files["removed"], compression="lz4")
    counters = list(counters)
    extra: dict = {}
    if isinstance(feeds, CollectionStage | GlobalStage):
        ensure_setup(feeds, services(plan))
        seconds = (write_keys(plan, step, i, rows) if isinstance(feeds, CollectionStage)
                   else global_step.write_summaries(plan, step, i, rows))
        # The cost belongs to the stage fed, whose counts are taken where its answer is applied;
        # a stage that only observes is applied nowhere: its records are these, unchanged.
        if getattr(feeds, "observes", False):
            fed = StageCounter(step.index + 1, step.feeds.label, step.feeds.shape, n_in=len(rows), n_out=len(rows),
                               inputs_with_output=len(rows))
        else:
            fed = StageCounter(step.index + 2, step.feeds.label, step.feeds.shape)
        fed.seconds = seconds
        counters.append(fed)
    elif isinstance(feeds, GroupStage):
        ensure_setup(feeds, services(plan))
        parts, seconds = group_step.write_parts(plan, step, i, rows, table)
        extra["parts"] = {str(p): g for p, g in parts.items()}
        fed = StageCounter(step.index + 1, step.feeds.label, step.feeds.shape)
        fed.seconds = seconds
        counters.append(fed)
    if step is plan.record_steps[-1] and plan.file_labeller is not None:
        from pipelines.publish import file_labels

        counts: dict[str, int] = defaultdict(int)
        for label in file_labels(plan, pa.table({plan.file_labeller.stage.file_label_field:
                                                 [r[plan.file_labeller.stage.file_label_field] for r in rows]})):
            counts[label] += 1
        extra["labels"] = dict(sorted(counts.items()))
    # pid: which process ran the shard (a Beam or pool worker, or the driver), for the record.
    marker = {"fingerprint": step.fingerprint, "shard": i, "records": len(rows), "pid": os.getpid(),
              "run_id": plan.run_id,
              "batches": batches or {}, **extra,
              "metrics": {c.stage: c.metrics for c in counters if c.metrics},
              "stats": [c.to_json() for c in counters], "seconds": round(time.time() - t0, 3)}
    write_text_atomic(json.dumps(marker), files["done"])
    shutil.rmtree(shard_checkpoints(plan, step, i).folder, ignore_errors=True)  # the shard's files hold them now
    return marker


def collect_metrics(plan: Plan) -> dict[str, dict]:
    """Metrics of the global steps (from their markers) and of every stage that measured on the
    workers (the sums over its tasks, summarised by the stage)."""
    out: dict[str, dict] = {}
    sums: dict[str, dict[str, float]] = {}
    for step in plan.steps:
        if step.kind is StepKind.GLOBAL:
            m = read_marker(step_dir(plan, step) / "done.json", step.fingerprint) or {}
            if m.get("metrics"):
                out[step.central.label] = m["metrics"]
        elif step.kind in (StepKind.SEGMENT, StepKind.GROUP):
            for i in range(len(plan.shards)):
                m = read_marker(shard_files(plan, step, i)["done"], step.fingerprint) or {}
                for label, values in m.get("metrics", {}).items():
                    total = sums.setdefault(label, defaultdict(float))
                    for k, v in values.items():
                        total[k] += v
    for ps in plan.stages:
        if ps.label in sums or isinstance(ps.stage, GroupStage):
            summary = ps.stage.summarize_metrics(dict(sums.get(ps.label, {})))
            if summary:
                out[ps.label] = summary
    return out


def removed_files(plan: Plan) -> list[Path]:
    """Every record step's removed-record files (the driver streams them, never holds them all)."""
    return [p for step in plan.record_steps for i in range(len(plan.shards))
            if (p := shard_files(plan, step, i)["removed"]).exists()]


def write_rejects(files: list[Path], path: Path, work: Path) -> int:
    """Every removed record into one file sorted by (stage, record id, then the rest, so the bytes
    are the same on every run), out of core: DuckDB sorts, spilling to ``work``. Returns the count."""
    import duckdb

    path.parent.mkdir(parents=True, exist_ok=True)
    if not files:
        write_parquet_atomic(REMOVED_SCHEMA.empty_table(), path)
        return 0
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    con = duckdb.connect(config=duckdb_config(work))
    try:
        listed = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
        cols = ", ".join(REMOVED_SCHEMA.names)
        con.execute(f"""COPY (SELECT {cols} FROM read_parquet([{listed}], union_by_name = true)
                        ORDER BY stage, record_id, kind, reason, detail, payload)
                        TO '{str(tmp).replace("'", "''")}' (FORMAT parquet, COMPRESSION zstd)""")
    finally:
        con.close()
    os.replace(tmp, path)
    shutil.rmtree(work / "duckdb-tmp", ignore_errors=True)
    return pq.ParquetFile(path).metadata.num_rows


def collect_stats(plan: Plan) -> list[dict]:
    items = []
    for step in plan.record_steps:
        for i in range(len(plan.shards)):
            m = read_marker(shard_files(plan, step, i)["done"], step.fingerprint)
            if m is None:
                raise RuntimeError(f"shard {i} of {step.name} has no completion marker")
            items.extend(m["stats"])
    return merge_stats(items, plan)


def collect_batches(plan: Plan) -> dict[str, dict[str, int]]:
    """Per model stage: batches this run computed and batches it read back from a killed run's
    checkpoints, over the shards this run processed (shards an earlier run finished are counted
    in ``resume``: their batches were not computed again)."""
    total: dict[str, dict[str, int]] = {}
    for step in plan.record_steps:
        for i in range(len(plan.shards)):
            m = read_marker(shard_files(plan, step, i)["done"], step.fingerprint) or {}
            if m.get("run_id") != plan.run_id:
                continue
            for label, counts in m.get("batches", {}).items():
                row = total.setdefault(label, {"batches_computed": 0, "batches_reused": 0})
                for k, v in counts.items():
                    row[k] += v
    return total


def input_counts(plan: Plan) -> dict[int, int]:
    """Records read from each input (index into the pipeline's inputs), from the first step's markers."""
    counts: dict[int, int] = defaultdict(int)
    first = plan.record_steps[0]
    for i, shard in enumerate(plan.shards):
        m = read_marker(shard_files(plan, first, i)["done"], first.fingerprint)
        counts[shard.input_index] += sum(s["in"] for s in m["stats"] if s["stage"] == "read")
    return dict(counts)
