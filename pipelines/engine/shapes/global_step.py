"""Global stages: every record's small summary to the driver, one decision there, its columns and
drops joined back onto the records by place on the workers.

The segment before a global step writes, next to each shard's records, the summary the stage asks
for (``summaries-i.parquet``: id, row, the summary fields). The driver reads those files (never the
records), calls ``decide`` once, and writes the answer by place (shard, row), sorted, so that the
next segment's shard ``i`` reads only its own rows. Artifacts and metrics go to the step folder; the
driver publishes them with the run.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.engine.accounting import StageCounter, route_outcomes
from pipelines.engine.layout import previous_records, read_marker, shard_files, step_dir
from pipelines.engine.shapes.base import Shape
from pipelines.engine.steps import GlobalStep, Plan, PlannedStage, Step
from schemas import cast_table
from schemas.files import atomic_parquet_writer, stream_batches, write_parquet_atomic, write_text_atomic
from stages.base import Dropped, GlobalContext, GlobalStage

_PLACE = [pa.field("shard", pa.int64()), pa.field("row", pa.int64())]
_DROP = [pa.field("reason", pa.string()), pa.field("detail", pa.string())]


def summary_schema(step: Step) -> pa.Schema:
    """The summaries a segment writes for the global stage it feeds."""
    ps = step.feeds
    fields = ps.stage.summary_fields(ps.input_schema)
    return pa.schema([pa.field("id", pa.string()), pa.field("row", pa.int64()), *fields])


def write_summaries(plan: Plan, step: Step, i: int, rows: list[dict]) -> float:
    """On the worker: shard ``i``'s summaries for the next global stage. Returns the seconds spent."""
    t0 = time.perf_counter()
    stage: GlobalStage = step.feeds.stage
    summaries = [{"id": r["id"], "row": j, **stage.summarize(r)} for j, r in enumerate(rows)]
    write_parquet_atomic(cast_table(summaries, summary_schema(step)), shard_files(plan, step, i)["summaries"],
                         compression="zstd")
    if stage.tallies:
        write_tallies(plan, step, i, rows)
    return time.perf_counter() - t0


_TALLY = pa.schema([pa.field("key", pa.string()), pa.field("n", pa.int64())])


def write_tallies(plan: Plan, step: Step, i: int, rows: Iterable[dict]) -> None:
    """On the worker: the stage's tallies summed over shard ``i``'s records, one row per key."""
    stage: GlobalStage = step.feeds.stage
    total: Counter = Counter()
    for r in rows:
        total.update(stage.tally(r))
    keys = sorted(total)
    write_parquet_atomic(pa.table({"key": pa.array(keys, pa.string()),
                                   "n": pa.array([total[k] for k in keys], pa.int64())}, schema=_TALLY),
                         shard_files(plan, step, i)["tallies"], compression="zstd")


def merged_tallies(plan: Plan, prev: Step) -> pa.Table:
    """Every shard's tallies, summed by key (sorted): one shard's table at a time beside the sum."""
    total = _TALLY.empty_table()
    for i in range(len(plan.shards)):
        both = pa.concat_tables([total, pq.read_table(shard_files(plan, prev, i)["tallies"])])
        total = both.group_by("key").aggregate([("n", "sum")]).rename_columns(["key", "n"])
    return total.sort_by("key")


def write_summaries_from_file(plan: Plan, step: Step, i: int, records: Path) -> float:
    """:func:`write_summaries` from a task's records file, a batch at a time (a group step's
    partition, never held whole). The same rows, so the same file."""
    t0 = time.perf_counter()
    stage: GlobalStage = step.feeds.stage
    schema = summary_schema(step)
    path = shard_files(plan, step, i)["summaries"]
    row = 0
    with atomic_parquet_writer(path, schema, compression="zstd") as writer:
        for batch in stream_batches(records):
            rows = batch.to_pylist()
            writer.write_table(cast_table([{"id": r["id"], "row": row + j, **stage.summarize(r)}
                                           for j, r in enumerate(rows)], schema))
            row += len(rows)
        if row == 0:
            writer.write_table(schema.empty_table())
    if stage.tallies:
        write_tallies(plan, step, i, (r for b in stream_batches(records)
                                      for r in b.to_pylist()))
    return time.perf_counter() - t0


def answer_file(plan: Plan, step: Step) -> Path:
    return step_dir(plan, step) / "answer.parquet"


def run_global(plan: Plan, step: Step, files_dir: Path | None = None) -> dict:
    """On the driver: every summary, in (shard, row) order (the same on every runner), through the
    stage's ``decide``; the answer by place. Skipped when an earlier run finished it."""
    work = step_dir(plan, step)
    marker_path = work / "done.json"
    done = read_marker(marker_path, step.fingerprint)
    if done and (not step.central.stage.tallies or shared_file(plan, step).exists()):
        return done
    t0 = time.perf_counter()
    prev = previous_records(plan, step)
    n = len(plan.shards)
    parts = [pq.read_table(shard_files(plan, prev, i)["summaries"]) for i in range(n)]
    shards = [pa.array([i] * t.num_rows, pa.int64()) for i, t in enumerate(parts)]
    table = pa.concat_tables(parts) if parts else summary_schema(prev).empty_table()
    place = {"shard": pa.concat_arrays(shards) if shards else pa.array([], pa.int64()), "row": table.column("row")}
    ps = step.central
    stage: GlobalStage = ps.stage
    stage.setup()
    ctx = GlobalContext(seed=plan.spec.seed, files_dir=files_dir, output_dir=Path(plan.output_dir), work_dir=work,
                        tallies=merged_tallies(plan, prev) if stage.tallies else None)
    result = stage.decide(table.drop_columns(["row"]), ctx)
    if stage.observes and result.dropped:
        raise RuntimeError(f"stage {step.central.label} observes only (no pass applies its answer) but dropped "
                           f"{len(result.dropped)} records: a stage that drops must not set 'observes'")
    added = list(stage.added_fields())
    columns = {f.name: pa.array(result.columns[f.name], f.type) if not isinstance(result.columns[f.name], pa.Array)
               else result.columns[f.name].cast(f.type) for f in added}
    for name, col in columns.items():
        if len(col) != table.num_rows:
            raise RuntimeError(f"{ps.label} answered {len(col)} values of '{name}' for {table.num_rows} records")
    reasons = [None] * table.num_rows
    details = [None] * table.num_rows
    ids = table.column("id").to_pylist()
    for k, d in result.dropped.items():
        if d.record_id != ids[k]:
            raise RuntimeError(f"{ps.label} dropped row {k} as '{d.record_id}', which is '{ids[k]}'")
        reasons[k], details[k] = d.reason, d.detail
    schema = pa.schema(_PLACE + _DROP + added)
    answer = pa.Table.from_pydict({**place, "reason": pa.array(reasons, pa.string()),
                                   "detail": pa.array(details, pa.string()), **columns}, schema=schema)
    write_parquet_atomic(answer, answer_file(plan, step), compression="zstd")
    for name, art in result.artifacts.items():
        write_parquet_atomic(art, work / f"artifact-{name}.parquet", compression="zstd")
    if result.shared is not None:
        write_parquet_atomic(result.shared, shared_file(plan, step), compression="zstd")
    else:
        shared_file(plan, step).unlink(missing_ok=True)
    marker = {"fingerprint": step.fingerprint, "run_id": plan.run_id, "records": table.num_rows,
              "dropped": len(result.dropped),
              "artifacts": list(result.artifacts), "metrics": result.metrics,
              "seconds": round(time.perf_counter() - t0, 6)}
    write_text_atomic(json.dumps(marker), marker_path)
    return marker


def shared_file(plan: Plan, step: Step) -> Path:
    return step_dir(plan, step) / "shared.parquet"


def load_answer(plan: Plan, step: Step, shard: int) -> tuple[dict[int, tuple[str, str]], list[dict]]:
    """Shard ``shard``'s part of a global step's answer: row -> (reason, detail) for the drops, and
    per row the added columns."""
    t = pq.read_table(answer_file(plan, step), filters=[("shard", "=", shard)]).sort_by("row")
    data = t.to_pydict()
    drops = {row: (r, d) for row, r, d in zip(data["row"], data["reason"], data["detail"], strict=True)
             if r is not None}
    names = [n for n in t.column_names if n not in ("shard", "row", "reason", "detail")]
    added = [dict(zip(names, vals, strict=True)) for vals in zip(*(data[n] for n in names), strict=True)] \
        if names else [{} for _ in range(t.num_rows)]
    return drops, added


def artifacts(plan: Plan, step: Step) -> dict[str, Path]:
    """The artifacts a finished global step left (name -> file)."""
    marker = read_marker(step_dir(plan, step) / "done.json", step.fingerprint) or {}
    return {name: step_dir(plan, step) / f"artifact-{name}.parquet" for name in marker.get("artifacts", [])}


class GlobalShape(Shape):
    """A global stage: the task before writes each record's summary, the driver decides once over
    all of them, the segment after joins the answer back by place (none for a stage that observes)."""

    name = "global"
    expanding_name = "global-expanding"
    answer_writes_side_tables = True
    fed_with = "summaries"  # what the task before writes for it

    def make_step(self, index: int, ps: PlannedStage) -> Step:
        return GlobalStep(index, adapter=self, central=ps)

    def answer_applied(self, stage) -> bool:
        return not stage.observes

    def feed(self, plan: Plan, step: Step, i: int, rows: list[dict], table) -> tuple[float, dict]:
        return write_summaries(plan, step, i, rows), {}

    def feed_streamed(self) -> bool:
        return True

    def feed_format(self, ps: PlannedStage) -> str | None:
        return "tallies" if ps.stage.tallies else None

    def feed_file(self, plan: Plan, step: Step, i: int, records: Path) -> tuple[float, dict]:
        return write_summaries_from_file(plan, step, i, records), {}

    def fed_counter(self, ps: PlannedStage, counted_at: int, n_rows: int) -> StageCounter:
        if not ps.stage.observes:  # counted where its answer is applied
            return super().fed_counter(ps, counted_at, n_rows)
        # applied nowhere: its records are the ones it was given, unchanged
        return StageCounter.of(counted_at, ps, n_in=n_rows, n_out=n_rows, inputs_with_output=n_rows)

    def apply(self, plan: Plan, gate: Step, i: int, records: list[dict], counter: StageCounter,
              removed: list[dict], sides: dict[str, list[dict]] | None) -> Iterator[dict]:
        """The answer for shard ``i``, record by record through the stage's ``apply``."""
        decisions, added = load_answer(plan, gate, i)
        if len(added) != len(records):
            raise RuntimeError(f"{gate.name} answered {len(added)} rows for shard {i}'s {len(records)} records")
        ps = gate.central
        shared = shared_file(plan, gate)
        ps.stage.receive_shared(pq.read_table(shared) if shared.exists() else None)
        for row, rec in enumerate(records):
            d = decisions.get(row)
            dropped = Dropped(rec["id"], d[0], d[1]) if d is not None else None
            counter.n_in += 1
            before = counter.n_out
            yield from route_outcomes(ps.label, ps.stage.apply(rec, added[row], dropped), counter, removed, sides)
            if counter.n_out > before:
                counter.inputs_with_output += 1

    def run_driver(self, plan: Plan, step: Step) -> None:
        run_global(plan, step, Path(plan.output_dir) / "plots")

    def driver_answer(self, plan: Plan, step: Step) -> dict:
        marker = read_marker(step_dir(plan, step) / "done.json", step.fingerprint) or {}
        return {"metrics": marker.get("metrics") or {}, "artifacts": artifacts(plan, step)}

    def where(self, step: Step, on_workers: str) -> dict:
        ps = step.central
        fields = [f.name for f in ps.stage.summary_fields(ps.input_schema)]
        return {"step": step.name, "shape": "global", "runs_on": "the driver, one decision over "
                "every record's summary; its columns are joined onto the records on the workers",
                "driver_holds": ["id, " + (", ".join(fields) or "(nothing else)") + " of every record"]}
