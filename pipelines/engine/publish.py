"""Publishing: records into output files whose bytes do not depend on the runner, side tables, fingerprints."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.engine.accounting import jsonable
from pipelines.engine.layout import read_marker, shard_files, side_file, side_tables, step_dir
from pipelines.engine.steps import Plan
from schemas import RecordSchema, cast_table
from schemas.files import atomic_parquet_writer, stream_batches, write_parquet_atomic
from schemas.tables import is_numeric_list, sort_by_id, take_rows


def record_digest(rec: dict) -> bytes:
    """SHA-256 of the record's canonical JSON (sorted keys); orjson, as token lists make this hot."""
    option = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
    return hashlib.sha256(orjson.dumps(rec, option=option, default=jsonable)).digest()


def bucket_of(record_id: str, n_files: int) -> int:
    return int.from_bytes(hashlib.sha1(record_id.encode()).digest()[:8], "big") % n_files


def n_output_files(n_records: int, records_per_file: int) -> int:
    return max(1, math.ceil(n_records / records_per_file))


def output_file(output_dir: str, j: int, n: int, label: str = "") -> Path:
    return Path(output_dir) / "data" / f"train-{label + '-' if label else ''}{j:05d}-of-{n:05d}.parquet"


@dataclass(frozen=True)
class OutputFiles:
    """The output's files: per label (``""`` when the records are not labelled), how many. A record
    goes to a file of its label chosen by a hash of its id; file ``j`` counts over all labels."""

    labels: tuple[tuple[str, int], ...]  # (label, files), labels sorted

    @classmethod
    def for_counts(cls, counts: dict[str, int], records_per_file: int) -> OutputFiles:
        if not counts:
            return cls((("", 1),))
        return cls(tuple((label, n_output_files(n, records_per_file)) for label, n in sorted(counts.items())))

    @property
    def count(self) -> int:
        return sum(n for _, n in self.labels)

    def _offsets(self) -> dict[str, int]:
        out, at = {}, 0
        for label, n in self.labels:
            out[label] = at
            at += n
        return out

    def files_of(self, labels: list[str], ids: list[str]) -> np.ndarray:
        offsets, sizes = self._offsets(), dict(self.labels)
        return np.fromiter((offsets[lab] + bucket_of(i, sizes[lab]) for lab, i in zip(labels, ids, strict=True)),
                           dtype=np.int64, count=len(ids))

    def path(self, output_dir: str, j: int) -> Path:
        for label, n in self.labels:
            if j < n:
                return output_file(output_dir, j, n, label)
            j -= n
        raise IndexError(j)


def file_labels(plan: Plan, table: pa.Table) -> list[str]:
    """The output-file label of each final record (all ``""`` when the records are not labelled)."""
    ps = plan.file_labeller
    if ps is None:
        return [""] * table.num_rows
    return [ps.stage.file_label(v) for v in table.column(ps.stage.file_label_field).to_pylist()]


def output_files(plan: Plan) -> OutputFiles:
    """The output's files, from the final step's markers (records per label)."""
    final = plan.record_steps[-1]
    counts: dict[str, int] = {}
    for i in range(len(plan.shards)):
        marker = read_marker(shard_files(plan, final, i)["done"], final.fingerprint)
        for label, n in marker.get("labels", {"": marker["records"]}).items():
            counts[label] = counts.get(label, 0) + n
    counts = {k: v for k, v in counts.items() if v}
    return OutputFiles.for_counts(counts, plan.spec.output.records_per_file)


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
    return step_dir(plan, plan.record_steps[-1]) / "publish"


def spill_shard(plan: Plan, i: int, files: OutputFiles) -> dict[int, list[int]] | dict[int, int]:
    """Shard ``i``'s final records, rewritten by output file, a batch of about ``BATCH_BYTES`` at a time (a group
    step's partition can be larger than a worker's memory): each batch as one row group per output
    file it touches. Returns output file -> the row groups holding its records. One output file:
    nothing to spill (``{0: -1}``)."""
    if files.count == 1:
        return {0: -1}
    path = publish_dir(plan) / f"spill-{i:05d}.parquet"
    source_path = shard_files(plan, plan.record_steps[-1], i)["records"]
    groups: dict[int, list[int]] = {}
    written = 0
    with atomic_parquet_writer(path, pq.ParquetFile(source_path).schema_arrow) as writer:
        for batch in stream_batches(source_path):
            table = pa.Table.from_batches([batch])
            which = files.files_of(file_labels(plan, table), table.column("id").to_pylist())
            order = np.argsort(which, kind="stable")
            table, which = take_rows(table, order), which[order]
            bounds = np.searchsorted(which, np.arange(files.count + 1))
            for j in np.unique(which).tolist():
                lo, hi = int(bounds[j]), int(bounds[j + 1])
                writer.write_table(table.slice(lo, hi - lo), row_group_size=hi - lo)
                groups.setdefault(j, []).append(written)
                written += 1
    return groups


def _spilled_groups(where) -> list[int]:
    """An index entry: a list of row groups, or one (an index made before spills were streamed)."""
    return where if isinstance(where, list) else [where]


def write_output_file(plan: Plan, j: int, files: OutputFiles, index: dict) -> Path:
    """Output file ``j`` from every shard's part of it (``index``: shard -> spill_shard's answer),
    in memory bounded by that one file."""
    final = plan.record_steps[-1]
    pieces = []
    for i in sorted(index):
        where = index[i].get(j)
        if where == -1:
            pieces.append(pq.read_table(shard_files(plan, final, i)["records"]))
        elif where is not None:
            spill = pq.ParquetFile(publish_dir(plan) / f"spill-{i:05d}.parquet")
            pieces += [spill.read_row_group(g) for g in _spilled_groups(where)]
    table = pa.concat_tables(pieces) if pieces else final.out_schema.arrow.empty_table()
    path = files.path(plan.output_dir, j)
    write_bucket_table(table, path, final.out_schema)
    return path


def publish_local(plan: Plan, files: OutputFiles) -> None:
    """Publish in this process: spill each shard, then write each output file."""
    index = {i: spill_shard(plan, i, files) for i in range(len(plan.shards))}
    for j in range(files.count):
        write_output_file(plan, j, files, index)


def finish_publish(plan: Plan, files: OutputFiles) -> list[Path]:
    """After every output file is written: remove the spill and the files of an earlier, larger run."""
    import shutil

    shutil.rmtree(publish_dir(plan), ignore_errors=True)
    paths = [files.path(plan.output_dir, j) for j in range(files.count)]
    remove_stale_outputs(plan.output_dir, paths)
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


def write_row_group_runs(table: pa.Table, which: np.ndarray, n: int, path: Path, max_rows: int,
                         max_bytes: int = 8 * 1024 * 1024) -> dict[int, list[int]]:
    """``table``, sorted by ``which`` (a bucket in 0..n-1 per row), each bucket in row groups of at
    most ``max_rows`` rows and about ``max_bytes``, so that a reader streams one bucket alone, a row
    group at a time;
    returns bucket -> [first row group, count]."""
    bounds = np.searchsorted(which, np.arange(n + 1))
    runs: dict[int, list[int]] = {}
    written = 0
    with atomic_parquet_writer(path, table.schema) as writer:
        for j in range(n):
            lo, hi = int(bounds[j]), int(bounds[j + 1])
            if hi > lo:
                runs[j] = [written, 0]
                per_row = table.slice(lo, hi - lo).nbytes / (hi - lo)
                step = max(1, min(max_rows, int(max_bytes / max(per_row, 1))))
                for start in range(lo, hi, step):
                    size = min(step, hi - start)
                    writer.write_table(table.slice(start, size), row_group_size=size)
                    runs[j][1] += 1
                    written += 1
    return runs


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
        inner = arr.values
        # null elements (a plan step without a word target) are hashed as a validity mask, never cast
        valid = inner.is_valid().to_numpy(zero_copy_only=False) if inner.null_count else None
        inner = pc.fill_null(inner, 0) if inner.null_count else inner
        values = inner.to_numpy(zero_copy_only=False).astype(arr.type.value_type.to_pandas_dtype(), copy=False)
        parts.append((name.encode(), arr.offsets.to_numpy(), values.astype(values.dtype.newbyteorder("<"), copy=False),
                      arr.is_null().to_numpy(zero_copy_only=False), valid))
    out = []
    for i, rec in enumerate(scalars):
        h = hashlib.sha256(orjson.dumps(rec, option=orjson.OPT_SORT_KEYS, default=str))
        for name, offs, values, nulls, valid in parts:
            h.update(b"\x00" + name + (b"\x00null" if nulls[i] else b"\x00" + values[offs[i]:offs[i + 1]].tobytes()))
            if valid is not None and not nulls[i] and not valid[offs[i]:offs[i + 1]].all():  # the row's own nulls
                h.update(b"\x00valid" + valid[offs[i]:offs[i + 1]].tobytes())
        out.append(h.digest())
    return out


def write_ordered(table: pa.Table, output_dir: str | Path, records_per_file: int) -> list[Path]:
    """A small driver-made table (a global stage's answer, UtK's markers) in the order it was
    made, cut into files."""
    n = n_output_files(table.num_rows, records_per_file)
    paths = [output_file(str(output_dir), j, n) for j in range(n)]
    for j, path in enumerate(paths):
        write_parquet_atomic(table.slice(j * records_per_file, records_per_file), path)
    remove_stale_outputs(str(output_dir), paths)
    return paths
