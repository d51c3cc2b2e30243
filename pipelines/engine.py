"""Runner-independent execution of plan steps: segments shard by shard, decisions, publishing.

The local and datatrove runners call these functions; the Beam runner uses the same record-level
helpers (:func:`apply_record_stage`, :func:`bucket_of`, :func:`write_bucket`) inside its transforms,
so every runner produces the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.io import read_shard
from pipelines.plan import Plan, PlannedStage, Step, StepKind
from schemas import REJECT, RecordSchema, cast_table
from schemas.files import write_parquet_atomic, write_text_atomic
from schemas.tables import is_numeric_list, sort_by_id
from stages.base import Dropped, Rejected, Services, SideRow, Truncated

#: Shapes whose output records are not the input records (reconciled by inputs that produced output).
EXPANDING = ("per-record-expanding", "whole-dataset")
REMOVED_SCHEMA = pa.schema(list(REJECT.arrow) + [pa.field("payload", pa.string())])
# A key row also says whose it is (the record id), where that record is (row of the shard's records
# file) and what it holds (its content digest), so that the decision can be taken out of core and
# copies of one record told apart: see run_decide() and copy_drops().
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


# -- statistics ------------------------------------------------------------------------------------


@dataclass
class StageCounter:
    step: int
    stage: str
    shape: str
    n_in: int = 0
    n_out: int = 0
    rejected: int = 0
    dropped: int = 0
    inputs_with_output: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"step": self.step, "stage": self.stage, "shape": self.shape, "in": self.n_in,
                "out": self.n_out, "rejected": self.rejected, "dropped": self.dropped,
                "inputs_with_output": self.inputs_with_output, "seconds": round(self.seconds, 6)}

    def reconciles(self) -> bool:
        produced = self.inputs_with_output if self.shape in EXPANDING else self.n_out
        return self.n_in == produced + self.rejected + self.dropped


def merge_stats(items: Iterable[dict], plan: Plan) -> list[dict]:
    """Sum per-shard statistics into one row per (step, stage), in plan order."""
    total: dict[tuple, dict] = {}
    for s in items:
        k = (s["step"], s["stage"])
        if k not in total:
            total[k] = dict(s)
        else:
            for f in ("in", "out", "rejected", "dropped", "inputs_with_output", "seconds"):
                total[k][f] += s[f]
    position = {ps.label: ps.index for ps in plan.stages}
    return sorted(total.values(), key=lambda s: (s["step"], position.get(s["stage"], -1)))


def removed_row(stage: str, item: Rejected | Dropped | Truncated) -> dict:
    kind = "rejected" if isinstance(item, Rejected) else "truncated" if isinstance(item, Truncated) else "dropped"
    return {"stage": stage, "record_id": item.record_id, "reason": item.reason, "detail": item.detail,
            "kind": kind, "payload": getattr(item, "payload", None)}


def _batches(records: Iterable[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for rec in records:
        batch.append(rec)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def apply_record_stage(ps: PlannedStage, records: Iterable[dict], counter: StageCounter,
                       removed: list[dict], checkpoints: BatchCheckpoints | None = None,
                       sides: dict[str, list[dict]] | None = None) -> Iterator[dict]:
    """Run one per-record stage over a stream, in batches of the size it asks for, counting what it
    removes. A model stage's batches go through ``checkpoints``: a finished batch is read back, never
    computed again. Side-table rows go to ``sides`` (table -> rows)."""
    stage = ps.stage
    res = stage.resources()
    for k, batch in enumerate(_batches(records, res.batch_size)):
        t0 = time.perf_counter()
        results = checkpoints.load(ps.label, k, batch) if checkpoints is not None and res.model else None
        if results is None:
            results = stage.process_batch(batch)
            if checkpoints is not None and res.model:
                checkpoints.save(ps.label, k, batch, results)
        counter.seconds += time.perf_counter() - t0
        for rec, outcomes in zip(batch, results, strict=True):
            counter.n_in += 1
            produced = False
            for o in outcomes:
                if isinstance(o, dict):
                    counter.n_out += 1
                    produced = True
                    yield o
                elif isinstance(o, SideRow):
                    if sides is None:
                        raise RuntimeError(f"stage {ps.label} wrote a side-table row where none is kept")
                    sides.setdefault(o.table, []).append(o.row)
                else:
                    if isinstance(o, Rejected):
                        counter.rejected += 1
                        if o.payload is None:
                            o = Rejected(o.record_id, o.reason, o.detail, record_json(rec))
                    else:
                        counter.dropped += 1
                    removed.append(removed_row(ps.label, o))
            if produced:
                counter.inputs_with_output += 1


class BatchCheckpoints:
    """A model stage's finished batches of one shard, one file each, under the step's work folder
    (whose name carries the step's fingerprint): a killed run's rerun reads them back instead of
    loading the model and computing them again. Each file names the ids of its batch, so a file
    from other input is never taken for this one."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.computed: dict[str, int] = defaultdict(int)
        self.reused: dict[str, int] = defaultdict(int)

    def _path(self, label: str, k: int) -> Path:
        return self.folder / f"{label}-batch-{k:06d}.json"

    def load(self, label: str, k: int, batch: list[dict]) -> list[list] | None:
        try:
            saved = orjson.loads(self._path(label, k).read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        if saved.get("ids") != [r["id"] for r in batch]:
            return None
        self.reused[label] += 1
        return [[_outcome_from_json(o) for o in outs] for outs in saved["outcomes"]]

    def save(self, label: str, k: int, batch: list[dict], results: list[list]) -> None:
        self.computed[label] += 1
        data = {"ids": [r["id"] for r in batch], "outcomes": [[_outcome_to_json(o) for o in outs] for outs in results]}
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(label, k)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY, default=_jsonable))
        os.replace(tmp, path)

    def tally(self) -> dict[str, dict[str, int]]:
        return {label: {"batches_computed": self.computed[label], "batches_reused": self.reused[label]}
                for label in sorted(set(self.computed) | set(self.reused))}


def shard_checkpoints(plan: Plan, step: Step, i: int) -> BatchCheckpoints:
    return BatchCheckpoints(step_dir(plan, step) / "batches" / f"shard-{i:05d}")


def _outcome_to_json(o) -> dict:
    if isinstance(o, dict):
        return {"record": o}
    if isinstance(o, SideRow):
        return {"side": [o.table, o.row]}
    kind = "rejected" if isinstance(o, Rejected) else "dropped"
    return {kind: [o.record_id, o.reason, o.detail] + ([o.payload] if isinstance(o, Rejected) else [])}


def _outcome_from_json(o: dict):
    if "record" in o:
        return o["record"]
    if "side" in o:
        return SideRow(*o["side"])
    if "rejected" in o:
        return Rejected(*o["rejected"])
    return Dropped(*o["dropped"])


def _jsonable(value):
    """JSON for what records may hold besides plain values: numpy arrays (token ids) as lists."""
    return value.tolist() if isinstance(value, np.ndarray) else str(value)


def record_json(rec: dict) -> str:
    """A record as it is kept in the rejects output."""
    return json.dumps(rec, ensure_ascii=False, sort_keys=True, default=_jsonable)


# -- work layout -----------------------------------------------------------------------------------


def work_root(plan: Plan) -> Path:
    return Path(plan.output_dir) / ".longforge" / "work"


def step_dir(plan: Plan, step: Step) -> Path:
    return work_root(plan) / f"{step.name}-{step.fingerprint[:12]}"


def shard_files(plan: Plan, step: Step, i: int) -> dict[str, Path]:
    d = step_dir(plan, step)
    return {
        "records": d / f"records-{i:05d}.parquet",
        "removed": d / f"removed-{i:05d}.parquet",
        "keys": d / f"keys-{i:05d}.parquet",
        "done": d / f"shard-{i:05d}.done.json",
    }


def side_file(plan: Plan, step: Step, table: str, i: int) -> Path:
    return step_dir(plan, step) / f"side-{table}-{i:05d}.parquet"


def side_tables(plan: Plan) -> dict[str, tuple[list[Step], RecordSchema]]:
    """Every side table of the record-level stages: name -> (the steps writing it, its schema).
    Stages may share a table (four score stages, one ``scores``) when they agree on its schema."""
    out: dict[str, tuple[list[Step], RecordSchema]] = {}
    for step in plan.segments:
        for ps in step.stages:
            for name, schema in ps.stage.side_tables().items():
                steps, known = out.setdefault(name, ([], schema))
                if known.arrow != schema.arrow:
                    raise ValueError(f"stages write side table '{name}' with two schemas")
                if step not in steps:
                    steps.append(step)
    return out


def _step_side_tables(step: Step) -> dict[str, RecordSchema]:
    return {name: schema for ps in step.stages for name, schema in ps.stage.side_tables().items()}


def read_marker(path: Path, fingerprint: str) -> dict | None:
    try:
        marker = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return marker if marker.get("fingerprint") == fingerprint else None


def shard_done(plan: Plan, step: Step, i: int) -> bool:
    return read_marker(shard_files(plan, step, i)["done"], step.fingerprint) is not None


def previous_segment(plan: Plan, step: Step) -> Step | None:
    segs = [s for s in plan.steps if s.kind is StepKind.SEGMENT and s.index < step.index]
    return segs[-1] if segs else None


def decide_step_before(plan: Plan, step: Step) -> Step | None:
    return next((s for s in plan.steps if s.kind is StepKind.DECIDE and s.index == step.index - 1), None)


# -- segments --------------------------------------------------------------------------------------


def iter_segment_input(plan: Plan, step: Step, i: int, counters: list[StageCounter],
                       removed: list[dict]) -> Iterator[dict]:
    """The records entering a segment's stages for shard ``i``: read input, or the previous segment
    filtered by the decisions of the collection stage between them."""
    prev = previous_segment(plan, step)
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
    decisions = load_decisions(plan, decide_step_before(plan, step), i)
    counter = StageCounter(step.index, step.gate.label, "whole-collection")
    counters.append(counter)
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


def run_segment_shard(plan: Plan, step: Step, i: int) -> dict:
    """Process shard ``i`` of a segment step and leave its files and completion marker."""
    t0 = time.time()
    counters: list[StageCounter] = []
    removed: list[dict] = []
    stream = iter_segment_input(plan, step, i, counters, removed)
    checkpoints = shard_checkpoints(plan, step, i)
    sides: dict[str, list[dict]] = {}
    for ps in step.stages:
        counter = StageCounter(step.index, ps.label, ps.shape)
        counters.append(counter)
        ensure_setup(ps.stage, services(plan))
        stream = apply_record_stage(ps, stream, counter, removed, checkpoints, sides)
    return finish_segment_shard(plan, step, i, list(stream), counters, removed, t0, checkpoints.tally(), sides)


def services(plan: Plan) -> Services:
    """What the engine hands the stages of this plan wherever they run."""
    return Services(generation_cache=generation_cache_dir(plan))


def generation_cache_dir(plan: Plan) -> Path:
    return Path(plan.output_dir) / ".longforge" / "generations"


def ensure_setup(stage, given: Services | None = None) -> None:
    if not getattr(stage, "_longforge_ready", False):
        if given is not None:
            stage.services = given
        stage.setup()
        stage._longforge_ready = True


def finish_segment_shard(plan: Plan, step: Step, i: int, rows: list[dict], counters: list[StageCounter],
                         removed: list[dict], t0: float, batches: dict | None = None,
                         sides: dict[str, list[dict]] | None = None) -> dict:
    """Write a shard's records, removed records, side-table rows and keys, then its completion
    marker (last)."""
    files = shard_files(plan, step, i)
    for name, schema in _step_side_tables(step).items():
        write_parquet_atomic(cast_table((sides or {}).get(name, []), schema.arrow), side_file(plan, step, name, i),
                             compression="zstd")
    write_parquet_atomic(cast_table(rows, step.out_schema.arrow), files["records"], compression="lz4")
    write_parquet_atomic(pa.Table.from_pylist(removed, schema=REMOVED_SCHEMA), files["removed"], compression="lz4")
    counters = list(counters)
    if step.emits_keys_for is not None:
        stage = step.emits_keys_for.stage
        ensure_setup(stage)
        t_keys = time.perf_counter()
        keys = []
        for j, r in enumerate(rows):
            digest = None
            for k, v in stage.keys(r):
                digest = digest or record_digest(r).hex()
                keys.append({"key": k, "value": json.dumps(v), "id": r["id"], "row": j, "digest": digest})
        write_parquet_atomic(pa.Table.from_pylist(keys, schema=KEYS_SCHEMA), files["keys"], compression="lz4")
        # The keys' cost belongs to the collection stage, whose counts are taken where it is applied.
        keys_counter = StageCounter(step.index + 2, step.emits_keys_for.label, "whole-collection")
        keys_counter.seconds = time.perf_counter() - t_keys
        counters.append(keys_counter)
    # pid: which process ran the shard (a Beam or pool worker, or the driver), for the record.
    marker = {"fingerprint": step.fingerprint, "shard": i, "records": len(rows), "pid": os.getpid(),
              "batches": batches or {},
              "stats": [c.to_json() for c in counters], "seconds": round(time.time() - t0, 3)}
    write_text_atomic(json.dumps(marker), files["done"])
    import shutil

    shutil.rmtree(shard_checkpoints(plan, step, i).folder, ignore_errors=True)  # the shard's files hold them now
    return marker


# -- decisions -------------------------------------------------------------------------------------


def run_decide(plan: Plan, step: Step) -> int:
    """Group the keys every shard emitted and let the collection stage decide what to drop.

    Out of core: DuckDB groups the shards' key files (spilling to disk when they outgrow memory),
    the groups stream through ``decide``, and the decisions by id are joined back to every place
    (shard, row) that holds the id. The driver holds one batch of groups, never every key."""
    import duckdb

    work = step_dir(plan, step)
    out = work / "decisions.parquet"
    marker = work / "done.json"
    if read_marker(marker, step.fingerprint):
        return json.loads(marker.read_text())["dropped"]
    prev = previous_segment(plan, step)
    stage = step.collection.stage
    stage.setup()
    parts = work / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(config={"temp_directory": str(work / "duckdb-tmp"), "preserve_insertion_order": False})
    try:
        files = ", ".join("'" + str(shard_files(plan, prev, i)["keys"]).replace("'", "''") + "'"
                          for i in range(len(plan.shards)))
        con.execute(f"""CREATE VIEW keys AS SELECT key, value, id, digest, row,
                        CAST(regexp_extract(filename, 'keys-([0-9]+)\\.parquet$', 1) AS BIGINT) AS shard
                        FROM read_parquet([{files}], filename = true)""")
        reader = con.sql("""SELECT key, list(value ORDER BY shard, row), list(digest ORDER BY shard, row),
                                list(shard ORDER BY shard, row), list(row ORDER BY shard, row)
                                FROM keys GROUP BY key""").to_arrow_reader(10_000)
        decided, copies, n_part = [], [], 0

        def flush(force: bool = False) -> None:
            nonlocal decided, copies, n_part
            if force or len(decided) + len(copies) >= 100_000:
                write_parquet_atomic(pa.Table.from_pylist(decided, schema=_DECIDED_SCHEMA),
                                     parts / f"decided-{n_part:05d}.parquet", compression="lz4")
                write_parquet_atomic(pa.Table.from_pylist(copies, schema=_COPIES_SCHEMA),
                                     parts / f"copies-{n_part:05d}.parquet", compression="lz4")
                decided, copies, n_part = [], [], n_part + 1

        for batch in reader:
            cols = batch.to_pydict()
            names = list(cols)
            for key, values, digests, shards, rows in zip(*(cols[n] for n in names), strict=True):
                entries = [(_tuplify(json.loads(v)), d, sh, r) for v, d, sh, r in zip(values, digests, shards, rows,
                                                                                        strict=True)]
                kept, drops = copy_drops(entries)
                decided += [{"record_id": d.record_id, "reason": d.reason, "detail": d.detail}
                            for d in stage.decide(key, kept)]
                copies += [{"record_id": value_id(v), "shard": sh, "row": r} for v, _, sh, r in drops]
                flush()
        flush(force=True)
        detail = f"another copy with the same id and {step.collection.label} key is kept".replace("'", "''")
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
        n_dropped = pq.ParquetFile(out).metadata.num_rows
    finally:
        con.close()
    import shutil

    shutil.rmtree(parts, ignore_errors=True)
    shutil.rmtree(work / "duckdb-tmp", ignore_errors=True)
    write_text_atomic(json.dumps({"fingerprint": step.fingerprint, "dropped": n_dropped}), marker)
    return n_dropped


def _tuplify(v):
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v


# -- publishing ------------------------------------------------------------------------------------


def record_digest(rec: dict) -> bytes:
    """SHA-256 of the record's canonical JSON (sorted keys); orjson, as token lists make this hot."""
    option = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
    return hashlib.sha256(orjson.dumps(rec, option=option, default=_jsonable)).digest()


def bucket_of(record_id: str, n_files: int) -> int:
    return int.from_bytes(hashlib.sha1(record_id.encode()).digest()[:8], "big") % n_files


def n_output_files(n_records: int, records_per_file: int) -> int:
    return max(1, math.ceil(n_records / records_per_file))


def output_file(output_dir: str, j: int, n: int, label: str = "") -> Path:
    return Path(output_dir) / "data" / f"train-{label + '-' if label else ''}{j:05d}-of-{n:05d}.parquet"


def write_bucket(rows: list[dict], path: Path, schema: RecordSchema) -> None:
    """Rows sorted by (id, content digest), so the file's bytes do not depend on arrival order."""
    rows = sorted(rows, key=lambda r: (r["id"], record_digest(r)))
    write_parquet_atomic(cast_table(rows, schema.arrow), path)


def write_bucket_table(table: pa.Table, path: Path, schema: RecordSchema) -> pa.Table:
    """:func:`write_bucket` for an Arrow table: with unique ids, sorting by id alone gives the same
    order (and bytes) without turning every record into Python objects and hashing it. Returns
    what it wrote."""
    if table.num_rows and pc.count_distinct(table.column("id")).as_py() == table.num_rows:
        ordered = sort_by_id(table.select(schema.arrow.names))
        ordered = pa.Table.from_arrays(ordered.columns, schema=schema.arrow)
        write_parquet_atomic(ordered, path)
        return ordered
    rows = sorted(table.to_pylist(), key=lambda r: (r["id"], record_digest(r)))
    ordered = cast_table(rows, schema.arrow)
    write_parquet_atomic(ordered, path)
    return ordered


def publish_dir(plan: Plan) -> Path:
    return step_dir(plan, plan.segments[-1]) / "publish"


def spill_shard(plan: Plan, i: int, n_files: int) -> dict[int, int]:
    """Shard ``i``'s final records, rewritten with one row group per output file (output file ->
    row group), so that each output file can be assembled alone. One file: nothing to spill."""
    if n_files == 1:
        return {0: -1}
    source = shard_files(plan, plan.segments[-1], i)["records"]
    return _spill_by_file(source, publish_dir(plan) / f"spill-{i:05d}.parquet", n_files)


def write_output_file(plan: Plan, j: int, n_files: int, index: dict[int, dict[int, int]]) -> Path:
    """Output file ``j`` from every shard's part of it (``index``: shard -> spill_shard's answer),
    in memory bounded by that one file."""
    final = plan.segments[-1]
    pieces = []
    for i in sorted(index):
        group = index[i].get(j)
        if group == -1:
            pieces.append(pq.read_table(shard_files(plan, final, i)["records"]))
        elif group is not None:
            pieces.append(pq.ParquetFile(publish_dir(plan) / f"spill-{i:05d}.parquet").read_row_group(group))
    table = pa.concat_tables(pieces) if pieces else final.out_schema.arrow.empty_table()
    path = output_file(plan.records_dir, j, n_files)
    write_bucket_table(table, path, final.out_schema)
    return path


def publish_local(plan: Plan, n_files: int) -> None:
    """Publish in this process: spill each shard, then write each output file."""
    index = {i: spill_shard(plan, i, n_files) for i in range(len(plan.shards))}
    for j in range(n_files):
        write_output_file(plan, j, n_files, index)


def finish_publish(plan: Plan, n_files: int) -> list[Path]:
    """After every output file is written: remove the spill and the files of an earlier, larger run."""
    import shutil

    shutil.rmtree(publish_dir(plan), ignore_errors=True)
    paths = [output_file(plan.records_dir, j, n_files) for j in range(n_files)]
    remove_stale_outputs(plan.records_dir, paths)
    return paths


def publish_side_table(plan: Plan, name: str, folder: Path) -> list[Path]:
    """A side table's rows, step by step and shard by shard (the same order on every runner), into
    files of ``records_per_file`` rows under ``folder/data``; one batch in memory at a time."""
    steps, schema = side_tables(plan)[name]
    sources = [side_file(plan, step, name, i) for step in steps for i in range(len(plan.shards))]
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in sources)
    per_file = plan.spec.output.records_per_file
    n = n_output_files(total, per_file)
    paths = [output_file(str(folder), j, n) for j in range(n)]

    def batches() -> Iterator[pa.RecordBatch]:
        for f in sources:
            yield from pq.ParquetFile(f).iter_batches(batch_size=min(per_file, 65_536))

    stream = batches()
    pending: pa.Table = schema.arrow.empty_table()
    for path in paths:
        while pending.num_rows < per_file:
            batch = next(stream, None)
            if batch is None:
                break
            pending = pa.concat_tables([pending, pa.Table.from_batches([batch], schema=schema.arrow)])
        write_parquet_atomic(pending.slice(0, per_file), path)
        pending = pending.slice(per_file)
    remove_stale_outputs(str(folder), paths)
    return paths


def _spill_by_file(source: Path, spill: Path, n: int) -> dict[int, int]:
    """One shard's records, rewritten with one row group per output file; returns file -> row group."""
    table = pq.read_table(source)
    which = np.fromiter((bucket_of(i, n) for i in table.column("id").to_pylist()), dtype=np.int64,
                        count=table.num_rows)
    order = np.argsort(which, kind="stable")
    table, which = table.take(pa.array(order)), which[order]
    bounds = np.searchsorted(which, np.arange(n + 1))
    groups: dict[int, int] = {}
    spill.parent.mkdir(parents=True, exist_ok=True)
    tmp = spill.with_name(f"{spill.name}.tmp-{os.getpid()}")
    with pq.ParquetWriter(str(tmp), table.schema, compression="lz4") as writer:
        for j in range(n):
            lo, hi = int(bounds[j]), int(bounds[j + 1])
            if hi > lo:
                writer.write_table(table.slice(lo, hi - lo), row_group_size=hi - lo)
                groups[j] = len(groups)
    os.replace(tmp, spill)
    return groups


def remove_stale_outputs(output_dir: str, keep: list[Path]) -> None:
    keep_names = {p.name for p in keep}
    data = Path(output_dir) / "data"
    for f in data.glob("train-*.parquet"):
        if f.name not in keep_names:
            f.unlink()


def dataset_fingerprint(output_dir: str, table: pa.Table | None = None) -> tuple[int, int, str]:
    """(records, bytes, fingerprint): a hash of the multiset of records, not of files or order.
    ``table``: the records just written there, when the caller holds them (saves reading them back)."""
    files = sorted((Path(output_dir) / "data").glob("train-*.parquet"))
    n_bytes = sum(f.stat().st_size for f in files)
    if table is not None:
        on_disk = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        if on_disk != table.num_rows:
            raise RuntimeError(f"{output_dir} holds {on_disk} records, {table.num_rows} were written")
        batches: Iterable[pa.RecordBatch] = table.to_batches(max_chunksize=10_000)
    else:
        batches = (b for f in files for b in pq.ParquetFile(f).iter_batches(batch_size=10_000))
    total, acc = 0, 0
    for batch in batches:
        for digest in batch_digests(batch):
            acc = (acc + int.from_bytes(digest[:16], "big")) % (1 << 128)
            total += 1
    return total, n_bytes, hashlib.sha256(f"{total}:{acc:032x}".encode()).hexdigest()


def duplicate_ids(output_dir: str) -> tuple[int, list[str]]:
    """Records whose id another record also has, and a few such ids: ids key every decision
    (dedup, scores, joins), so a duplicated one is worth a warning."""
    files = sorted((Path(output_dir) / "data").glob("train-*.parquet"))
    if not files:
        return 0, []
    ids = pq.read_table([str(f) for f in files], columns=["id"]).column("id")
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    extra = int(pc.sum(repeated.field("counts")).as_py() or 0) - len(repeated)
    return extra, repeated.field("values").to_pylist()[:5]


def batch_digests(batch: pa.RecordBatch) -> list[bytes]:
    """One content digest per row: canonical JSON of the scalar fields, plus the raw little-endian
    values of numeric list fields (token ids, vectors), which are never turned into Python numbers."""
    lists = [n for n, t in zip(batch.schema.names, batch.schema.types, strict=True) if is_numeric_list(t)]
    scalars = batch.drop_columns(lists).to_pylist() if lists else batch.to_pylist()
    if not lists:
        return [hashlib.sha256(orjson.dumps(r, option=orjson.OPT_SORT_KEYS, default=str)).digest() for r in scalars]
    parts = []
    for name in lists:
        arr = batch.column(name)
        values = arr.values.to_numpy(zero_copy_only=False).astype(arr.type.value_type.to_pandas_dtype(), copy=False)
        parts.append((name.encode(), arr.offsets.to_numpy(), values.astype(values.dtype.newbyteorder("<"), copy=False),
                      arr.is_null().to_numpy(zero_copy_only=False)))
    out = []
    for i, rec in enumerate(scalars):
        h = hashlib.sha256(orjson.dumps(rec, option=orjson.OPT_SORT_KEYS, default=str))
        for name, offs, values, nulls in parts:
            h.update(b"\x00" + name + (b"\x00null" if nulls[i] else b"\x00" + values[offs[i]:offs[i + 1]].tobytes()))
        out.append(h.digest())
    return out


def collect_removed(plan: Plan) -> pa.Table:
    tables = []
    for step in plan.segments:
        for i in range(len(plan.shards)):
            p = shard_files(plan, step, i)["removed"]
            if p.exists():
                tables.append(pq.read_table(p, schema=REMOVED_SCHEMA))
    if not tables:
        return REMOVED_SCHEMA.empty_table()
    return pa.concat_tables(tables)


def collect_stats(plan: Plan) -> list[dict]:
    items = []
    for step in plan.segments:
        for i in range(len(plan.shards)):
            m = read_marker(shard_files(plan, step, i)["done"], step.fingerprint)
            if m is None:
                raise RuntimeError(f"shard {i} of {step.name} has no completion marker")
            items.extend(m["stats"])
    return merge_stats(items, plan)


def collect_batches(plan: Plan) -> dict[str, dict[str, int]]:
    """Per model stage: batches computed and batches read back from a killed run's checkpoints,
    summed over the shards this run processed (a shard finished by an earlier run counts as
    ``shards_reused``)."""
    total: dict[str, dict[str, int]] = {}
    for step in plan.segments:
        for i in range(len(plan.shards)):
            m = read_marker(shard_files(plan, step, i)["done"], step.fingerprint)
            for label, counts in (m or {}).get("batches", {}).items():
                row = total.setdefault(label, {"batches_computed": 0, "batches_reused": 0})
                for k, v in counts.items():
                    row[k] += v
    return total


def input_counts(plan: Plan) -> dict[int, int]:
    """Records read from each input (index into the pipeline's inputs), from the first step's markers."""
    counts: dict[int, int] = defaultdict(int)
    first = plan.segments[0]
    for i, shard in enumerate(plan.shards):
        m = read_marker(shard_files(plan, first, i)["done"], first.fingerprint)
        counts[shard.input_index] += sum(s["in"] for s in m["stats"] if s["stage"] == "read")
    return dict(counts)


def segment_records(plan: Plan, step: Step) -> int:
    return sum(
        read_marker(shard_files(plan, step, i)["done"], step.fingerprint)["records"]
        for i in range(len(plan.shards))
    )


# -- whole-dataset stages --------------------------------------------------------------------------


@dataclass
class DatasetOutcome:
    table: pa.Table  # the final records (the pipeline's output)
    artifacts: dict[str, pa.Table]  # side products, in production order
    stats: list[dict]
    removed: pa.Table
    metrics: dict[str, dict]
    file_groups: list[tuple[str, int]] | None = None  # see stages.base.DatasetResult


def run_dataset_step(plan: Plan, files_dir: Path, records: pa.Table | None = None, catalog=None) -> DatasetOutcome:
    """Run the whole-dataset stages over what the record-level stages published: ``records``, sorted
    by id, when the runner still holds them, else read back from the files."""
    from stages.base import DatasetContext

    step = next(s for s in plan.steps if s.kind is StepKind.DATASET)
    if records is None:
        files = sorted((Path(plan.records_dir) / "data").glob("train-*.parquet"))
        table = pq.read_table([str(f) for f in files]) if files else plan.records_schema.arrow.empty_table()
        table = sort_by_id(table)
    else:
        table = records
    ctx = DatasetContext(table=table, seed=plan.spec.seed, files_dir=files_dir,
                         work_dir=work_root(plan) / f"{step.name}-{step.fingerprint[:12]}",
                         output_dir=Path(plan.output_dir), catalog=catalog)
    stats, removed = [], []
    file_groups = None
    for ps in step.stages:
        ensure_setup(ps.stage)
        n_in = ctx.table.num_rows
        t0 = time.perf_counter()
        before = ctx.table
        result = ps.stage.run(ctx)
        if result.file_groups is not None:
            file_groups = result.file_groups
        elif result.table is not before:
            file_groups = None
        ctx.table = result.table
        seconds = time.perf_counter() - t0
        consumed = result.consumed if result.consumed is not None else ctx.table.num_rows
        stats.append({"step": step.index, "stage": ps.label, "shape": "whole-dataset", "in": n_in,
                      "out": ctx.table.num_rows, "rejected": 0, "dropped": len(result.dropped),
                      "inputs_with_output": consumed, "seconds": round(seconds, 6)})
        removed.extend(removed_row(ps.label, d) for d in result.dropped)
        removed.extend(removed_row(ps.label, t) for t in result.truncated)  # used in part: not a drop
    final = ctx.table.cast(step.out_schema.arrow) if ctx.table.schema != step.out_schema.arrow else ctx.table
    if file_groups is not None and sum(n for _, n in file_groups) != final.num_rows:
        raise RuntimeError(f"file groups cover {sum(n for _, n in file_groups)} rows of {final.num_rows}")
    return DatasetOutcome(final, ctx.artifacts, stats, pa.Table.from_pylist(removed, schema=REMOVED_SCHEMA),
                          ctx.metrics, file_groups)


def write_ordered(table: pa.Table, output_dir: str | Path, records_per_file: int,
                  file_groups: list[tuple[str, int]] | None = None) -> list[Path]:
    """Records in the order the stage gave them (a traversal, shuffled contexts), cut into files;
    with ``file_groups``, each group's rows into files of their own, ``train-<label>-j-of-n``."""
    paths = []
    groups = file_groups if file_groups is not None else [("", table.num_rows)]
    start = 0
    for label, rows in groups:
        n = n_output_files(rows, records_per_file)
        for j in range(n):
            path = output_file(str(output_dir), j, n, label)
            write_parquet_atomic(table.slice(start + j * records_per_file, min(records_per_file,
                                                                                rows - j * records_per_file)), path)
            paths.append(path)
        start += rows
    remove_stale_outputs(str(output_dir), paths)
    return paths
