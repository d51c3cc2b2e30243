"""Atomic file writes: a reader never sees a half-written file.

A leaf module (pyarrow and schemas.tables only), so that the engine, the stages and the scoring jobs share one writer
without importing each other.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.tables import is_numeric_list


def write_parquet_atomic(table: pa.Table, path: str | Path, compression: str = "zstd") -> None:
    """Write under a temporary name and rename, so a reader never sees a half-written file.
    Published files use zstd; work files between steps, read once, use the faster lz4."""
    path = str(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    extra = {"use_dictionary": dictionary_columns(table.schema)} if compression == "lz4" else {}
    pq.write_table(table, tmp, compression=compression, row_group_size=10_000, write_statistics=True, **extra)
    os.replace(tmp, path)


#: What a streaming reader or writer holds at a time: batches are sized in bytes, not rows (a UtK
#: sample of 32K tokens weighs as much as a thousand short documents).
BATCH_BYTES = 32 * 1024 * 1024


def batch_rows(path: str | Path, max_rows: int = 65_536) -> int:
    """Rows per batch when streaming the Parquet file at ``path``: about :data:`BATCH_BYTES` of
    decoded data, from the file's own sizes, between 1 and ``max_rows``."""
    meta = pq.ParquetFile(path).metadata
    if meta.num_rows == 0:
        return max_rows
    size = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
    return max(1, min(max_rows, int(BATCH_BYTES * meta.num_rows / max(size, 1))))


def stream_batches(path: str | Path, rows: int | None = None):
    """The file's records a row group at a time, in batches of at most ``rows`` rows (default:
    about :data:`BATCH_BYTES`). Not ``ParquetFile.iter_batches``: it keeps what it decoded of earlier
    row groups alive until it ends (a 770 MB file read in 32 MB batches held 580 MB)."""
    pf = pq.ParquetFile(path)
    rows = rows or batch_rows(path)
    for g in range(pf.metadata.num_row_groups):
        table = pf.read_row_group(g)
        yield from table.to_batches(max_chunksize=rows)
        del table


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns a work file dictionary-encodes: all but numeric lists (token ids), whose
    dictionary costs more to build and to read than it saves on a file read once (a tenth of a
    second each way per 20M tokens)."""
    return [f.name for f in schema if not is_numeric_list(f.type)]


@contextmanager
def atomic_parquet_writer(path: str | Path, schema: pa.Schema, compression: str = "lz4") -> Iterator[pq.ParquetWriter]:
    """A Parquet writer for a file written a batch at a time: it writes under a temporary name, renamed
    to ``path`` when the block ends, removed if the block fails. Work files (``lz4``) dictionary-encode
    :func:`dictionary_columns`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    extra = {"use_dictionary": dictionary_columns(schema)} if compression == "lz4" else {}
    try:
        with pq.ParquetWriter(str(tmp), schema, compression=compression, **extra) as writer:
            yield writer
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_text_atomic(text: str, path: str | Path) -> None:
    path = str(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
