"""What a run's markers add up to, read on the driver once the tasks are done: statistics per
stage, metrics, resumed work, model batches, records read per input, and the removed records
(sorted out of core into one rejects file)."""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.engine.accounting import REMOVED_SCHEMA, merge_stats
from pipelines.engine.layout import duckdb_config, read_marker, shard_files, step_dir
from pipelines.engine.steps import Plan
from schemas.files import write_parquet_atomic


def collect_resume(plan: Plan) -> dict[str, int]:
    """What this run did and what it found finished by an earlier run (by the run ids in the
    markers): tasks (shards, partitions) and driver steps (decide, global)."""
    out = {"tasks_run": 0, "tasks_reused": 0, "driver_steps_run": 0, "driver_steps_reused": 0}
    for step in plan.steps:
        if step.on_workers:
            markers = [read_marker(shard_files(plan, step, i)["done"], step.fingerprint)
                       for i in range(len(plan.shards))]
            kind = "tasks"
        else:
            markers = [read_marker(step_dir(plan, step) / "done.json", step.fingerprint)]
            kind = "driver_steps"
        for m in markers:
            if m is not None:
                out[f"{kind}_run" if m.get("run_id") == plan.run_id else f"{kind}_reused"] += 1
    return out


def collect_metrics(plan: Plan) -> dict[str, dict]:
    """Metrics of the global steps (from their markers) and of every stage that measured on the
    workers (the sums over its tasks, summarised by the stage)."""
    out: dict[str, dict] = {}
    sums: dict[str, dict[str, float]] = {}
    for step in plan.steps:
        if not step.on_workers:
            metrics = step.adapter.driver_answer(plan, step).get("metrics")
            if metrics:
                out[step.central.label] = metrics
        else:
            for i in range(len(plan.shards)):
                m = read_marker(shard_files(plan, step, i)["done"], step.fingerprint) or {}
                for label, values in m.get("metrics", {}).items():
                    total = sums.setdefault(label, defaultdict(float))
                    for k, v in values.items():
                        total[k] += v
    for ps in plan.stages:
        if ps.label in sums or ps.adapter.summarizes_without_sums:
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
