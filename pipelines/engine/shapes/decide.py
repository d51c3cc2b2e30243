"""Whole-collection decisions: the keys each shard emits, grouped out of core, decided, applied by place."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.engine.accounting import StageCounter
from pipelines.engine.layout import duckdb_config, previous_records, read_marker, shard_files, step_dir
from pipelines.engine.publish import record_digest
from pipelines.engine.shapes.base import Shape
from pipelines.engine.steps import DecideStep, Plan, PlannedStage, Step
from schemas.files import write_parquet_atomic, write_text_atomic

KEYS_SCHEMA = pa.schema([pa.field("key", pa.string()), pa.field("value", pa.string()), pa.field("id", pa.string()),
                         pa.field("row", pa.int64()), pa.field("digest", pa.string())])
# Decisions are by place: the gate of shard i reads only the rows of shard i.


DECISIONS_SCHEMA = pa.schema([pa.field("shard", pa.int64()), pa.field("row", pa.int64()),
                              pa.field("reason", pa.string()), pa.field("detail", pa.string())])


_DECIDED_SCHEMA = pa.schema([pa.field("record_id", pa.string()), pa.field("reason", pa.string()),
                             pa.field("detail", pa.string())])


_COPIES_SCHEMA = pa.schema([pa.field("record_id", pa.string()), pa.field("shard", pa.int64()),
                            pa.field("row", pa.int64())])


COPY_REASON = "duplicate record"


def write_keys(plan: Plan, step: Step, i: int, rows: list[dict]) -> float:
    """On the worker: shard ``i``'s keys for the next collection stage. Returns the seconds spent."""
    t0 = time.perf_counter()
    stage = step.feeds.stage
    cols: dict[str, list] = {"key": [], "value": [], "id": [], "row": [], "digest": []}  # columns, not dicts:
    for j, r in enumerate(rows):  # a shard emits ~15 keys a record under MinHash
        digest = None
        for k, v in stage.keys(r):
            digest = digest or record_digest(r).hex()
            for name, x in (("key", k), ("value", json.dumps(v)), ("id", r["id"]), ("row", j), ("digest", digest)):
                cols[name].append(x)
    write_parquet_atomic(pa.Table.from_pydict(cols, schema=KEYS_SCHEMA), shard_files(plan, step, i)["keys"],
                         compression="lz4")
    return time.perf_counter() - t0


def load_decisions(plan: Plan, decide: Step, shard: int) -> dict[int, tuple[str, str]]:
    """The decisions about shard ``shard``'s rows: row -> (reason, detail). The file is sorted by
    (shard, row), so only the row groups of this shard are read."""
    t = pq.read_table(step_dir(plan, decide) / "decisions.parquet", filters=[("shard", "=", shard)]).to_pydict()
    return {row: (reason, detail) for row, reason, detail in zip(t["row"], t["reason"], t["detail"], strict=True)}


def value_id(value) -> str:
    """The record id in a collection stage's key value: the value itself, or its first item."""
    return value if isinstance(value, str) else value[0]


def copy_drops(entries: list[tuple]) -> tuple[list, list[tuple]]:
    """Records that share an id and fall in one key group are copies of one record (the same file
    read twice, a line repeated). ``entries``: (value, digest, *place). Returns one value per id for
    the stage to decide on, and the entries of the copies to drop: per id, the one with the
    smallest (digest, place) stays, so exactly one copy survives, the same one on every runner."""
    by_id: dict[str, list[tuple]] = defaultdict(list)
    for e in entries:
        by_id[value_id(e[0])].append(e)
    values, drops = [], []
    for rid in sorted(by_id):
        group = sorted(by_id[rid], key=lambda e: e[1:])
        values.append(group[0][0])
        drops.extend(group[1:])
    return values, drops


def run_decide(plan: Plan, step: Step) -> int:
    """Group the keys every shard emitted and let the collection stage decide what to drop.

    Out of core: DuckDB sorts the shards' key files by key (spilling to disk when they outgrow its
    memory cap), consecutive rows of one key stream through ``decide`` as a group, and the decisions
    by id are joined back to every place (shard, row) that holds the id. The driver holds one batch
    of sorted keys and the group being read, never every key."""
    import duckdb

    work = step_dir(plan, step)
    out = work / "decisions.parquet"
    marker = work / "done.json"
    if read_marker(marker, step.fingerprint):
        return json.loads(marker.read_text())["dropped"]
    prev = previous_records(plan, step)
    stage = step.central.stage
    stage.setup()
    parts = work / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(config=duckdb_config(work))
    try:
        files = ", ".join("'" + str(shard_files(plan, prev, i)["keys"]).replace("'", "''") + "'"
                          for i in range(len(plan.shards)))
        con.execute(f"""CREATE VIEW keys AS SELECT key, value, id, digest, row,
                        CAST(regexp_extract(filename, 'keys-([0-9]+)\\.parquet$', 1) AS BIGINT) AS shard
                        FROM read_parquet([{files}], filename = true)""")
        _decide_groups(con, stage, parts)
        _write_decisions(con, out, parts, step.central.label)
        n_dropped = pq.ParquetFile(out).metadata.num_rows
    finally:
        con.close()
    import shutil

    shutil.rmtree(parts, ignore_errors=True)
    shutil.rmtree(work / "duckdb-tmp", ignore_errors=True)
    write_text_atomic(json.dumps({"fingerprint": step.fingerprint, "dropped": n_dropped, "run_id": plan.run_id}),
                      marker)
    return n_dropped


def _decide_groups(con, stage, parts) -> None:
    """Every key group through the stage's ``decide``, in key order, its decisions and the copies
    it drops written to ``parts`` in batches."""
    # Sorted, not grouped: a sort spills to disk, list aggregates would not. Consecutive rows of
    # one key form its group; the driver holds one batch and the group being read.
    reader = con.sql("SELECT key, value, digest, shard, row FROM keys ORDER BY key, shard, row"
                     ).to_arrow_reader(65_536)
    decided, copies, n_part = [], [], 0

    def flush(force: bool = False) -> None:
        nonlocal decided, copies, n_part
        if force or len(decided) + len(copies) >= 100_000:
            write_parquet_atomic(pa.Table.from_pylist(decided, schema=_DECIDED_SCHEMA),
                                 parts / f"decided-{n_part:05d}.parquet", compression="lz4")
            write_parquet_atomic(pa.Table.from_pylist(copies, schema=_COPIES_SCHEMA),
                                 parts / f"copies-{n_part:05d}.parquet", compression="lz4")
            decided, copies, n_part = [], [], n_part + 1

    def close_group(key: str, entries: list[tuple]) -> None:
        nonlocal decided, copies
        kept, drops = copy_drops(entries)
        decided += [{"record_id": d.record_id, "reason": d.reason, "detail": d.detail}
                    for d in stage.decide(key, kept)]
        copies += [{"record_id": value_id(v), "shard": sh, "row": r} for v, _, sh, r in drops]
        flush()

    current, entries = None, []
    for batch in reader:
        cols = batch.to_pydict()
        for key, v, d, sh, r in zip(cols["key"], cols["value"], cols["digest"], cols["shard"], cols["row"],
                                    strict=True):
            if key != current:
                if current is not None:
                    close_group(current, entries)
                current, entries = key, []
            entries.append((_tuplify(json.loads(v)), d, sh, r))
    if current is not None:
        close_group(current, entries)
    flush(force=True)


def _write_decisions(con, out, parts, label: str) -> None:
    """The decisions by place (shard, row), for the gates to read, written to ``out``."""
    detail = f"another copy with the same id and {label} key is kept".replace("'", "''")
    tmp = f"{out}.tmp-{os.getpid()}".replace("'", "''")
    parts_sql = str(parts).replace("'", "''")
    # One decision per id (the smallest (reason, detail), as merge_decisions), at every place of
    # the id; then the copies of ids not decided otherwise; by place, for the gates to read.
    con.execute(f"""COPY (
        WITH decided AS (
            SELECT record_id, reason, detail FROM (
                SELECT *, row_number() OVER (PARTITION BY record_id ORDER BY reason, detail) AS k
                FROM read_parquet('{parts_sql}/decided-*.parquet')) WHERE k = 1),
        places AS (SELECT DISTINCT id, shard, row FROM keys)
        SELECT p.shard, p.row, d.reason, d.detail FROM places p JOIN decided d ON p.id = d.record_id
        UNION ALL
        SELECT DISTINCT c.shard, c.row, '{COPY_REASON}' AS reason, '{detail}' AS detail
        FROM read_parquet('{parts_sql}/copies-*.parquet') c ANTI JOIN decided d ON c.record_id = d.record_id
        ORDER BY shard, row
    ) TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)""")
    os.replace(tmp, out)


def _tuplify(v):
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v


class CollectionShape(Shape):
    """A whole-collection stage: the task before writes each record's keys, the driver decides
    out of core, the segment after drops by place."""

    name = "whole-collection"
    fed_with = "keys"  # what the task before writes for it

    def make_step(self, index: int, ps: PlannedStage) -> Step:
        return DecideStep(index, adapter=self, central=ps)

    def answer_applied(self, stage) -> bool:
        return True

    def feed(self, plan: Plan, step: Step, i: int, rows: list[dict], table) -> tuple[float, dict]:
        return write_keys(plan, step, i, rows), {}

    def apply(self, plan: Plan, gate: Step, i: int, records: list[dict], counter: StageCounter,
              removed: list[dict], sides: dict[str, list[dict]] | None) -> Iterator[dict]:
        decisions = load_decisions(plan, gate, i)
        label = gate.central.label
        for row, rec in enumerate(records):
            counter.n_in += 1
            d = decisions.get(row)
            if d is None:
                counter.n_out += 1
                yield rec
            else:
                counter.dropped += 1
                removed.append({"stage": label, "record_id": rec["id"], "reason": d[0],
                                "detail": d[1], "kind": "dropped", "payload": None})
        counter.inputs_with_output = counter.n_out

    def run_driver(self, plan: Plan, step: Step) -> None:
        run_decide(plan, step)

    def where(self, step: Step, on_workers: str) -> dict:
        return {"step": step.name, "shape": "whole-collection (keys -> decide)",
                "runs_on": "the driver, out of core (DuckDB sorts the shards' key files, spilling "
                           "to disk, within LONGFORGE_DUCKDB_MEMORY)",
                "driver_holds": ["one batch of sorted keys and the key group being decided: key, "
                                 "value, id, digest, shard, row"]}
