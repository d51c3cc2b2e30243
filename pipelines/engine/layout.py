"""Where a run keeps its work: one folder per step (named by its fingerprint), files per shard, markers."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.engine.steps import Plan, Step
from schemas import RecordSchema


def work_root(plan: Plan) -> Path:
    return Path(plan.output_dir) / ".longforge" / "work"


def step_dir(plan: Plan, step: Step) -> Path:
    return work_root(plan) / f"{step.name}-{step.fingerprint[:12]}"


def shard_files(plan: Plan, step: Step, i: int) -> dict[str, Path]:
    d = step_dir(plan, step)
    return {
        "records": d / f"records-{i:05d}.parquet",
        "removed": d / f"removed-{i:05d}.parquet",
        "keys": d / f"keys-{i:05d}.parquet",  # for the next decide step
        "summaries": d / f"summaries-{i:05d}.parquet",  # for the next global step
        "tallies": d / f"tallies-{i:05d}.parquet",  # the next global step's counts, summed over the shard
        "parts": d / f"parts-{i:05d}.parquet",  # for the next group step: one row group per partition
        "done": d / f"shard-{i:05d}.done.json",
    }


def side_file(plan: Plan, step: Step, table: str, i: int) -> Path:
    return step_dir(plan, step) / f"side-{table}-{i:05d}.parquet"


def side_tables(plan: Plan) -> dict[str, tuple[list[Step], RecordSchema]]:
    """Every side table of the record-level stages: name -> (the steps writing it, its schema).
    Stages may share a table (four score stages, one ``scores``) when they agree on its schema."""
    out: dict[str, tuple[list[Step], RecordSchema]] = {}
    for step in plan.record_steps:
        for name, schema in step_side_tables(step).items():
            steps, known = out.setdefault(name, ([], schema))
            if known.arrow != schema.arrow:
                raise ValueError(f"stages write side table '{name}' with two schemas")
            if step not in steps:
                steps.append(step)
    return out


def step_side_tables(step: Step) -> dict[str, RecordSchema]:
    """The side tables a worker step's tasks write, shard by shard."""
    return {name: schema for ps in step.side_table_stages() for name, schema in ps.stage.side_tables().items()}


def read_marker(path: Path, fingerprint: str) -> dict | None:
    try:
        marker = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return marker if marker.get("fingerprint") == fingerprint else None


def shard_done(plan: Plan, step: Step, i: int) -> bool:
    """Task ``i`` of ``step`` is finished: its marker is there, and what it wrote for the next
    stage has the form that stage reads now (a marker of an older longforge whose feed changed
    form, summed tallies or a place of another type, is redone, not misread)."""
    marker = read_marker(shard_files(plan, step, i)["done"], step.fingerprint)
    return marker is not None and marker.get("feed_format") == feed_format(step)


def feed_format(step: Step) -> str | None:
    """The form of what ``step``'s tasks write for the stage they feed, when not the first one."""
    return step.feeds.adapter.feed_format(step.feeds) if step.feeds is not None else None


def previous_records(plan: Plan, step: Step) -> Step | None:
    """The last step before ``step`` that left records shard by shard (a segment or a group step)."""
    before = [s for s in plan.record_steps if s.index < step.index]
    return before[-1] if before else None


def generation_cache_dir(plan: Plan) -> Path:
    return Path(plan.output_dir) / ".longforge" / "generations"


def duckdb_config(work: Path) -> dict:
    """The driver's out-of-core work (decisions, rejects) in bounded memory: DuckDB otherwise takes
    up to 80 % of the machine before it spills. ``LONGFORGE_DUCKDB_MEMORY`` overrides the 1 GB."""
    import os

    return {"temp_directory": str(work / "duckdb-tmp"), "preserve_insertion_order": False,
            "memory_limit": os.environ.get("LONGFORGE_DUCKDB_MEMORY", "1GB")}
