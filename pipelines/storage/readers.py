"""Readers (JSONL plain/.gz/.zst, Parquet, text folders, local HF datasets): a shard's records as
``document@1`` dicts. A malformed record never raises here: it becomes a :class:`Rejected` with a
reason. Shards are planned in :mod:`pipelines.storage.sharding`."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import replace

import pyarrow as pa

from pipelines import storage
from pipelines.spec import InputSpec, ReadSpec
from pipelines.storage.sharding import (  # noqa: F401 - planning, where readers are looked for
    MB,
    InputError,
    Shard,
    _open_binary,
    _open_parquet,
    check_input_file,
    estimate_records,
    plan_shards,
)
from schemas import DOCUMENT
from stages.base import Rejected

# -- records ---------------------------------------------------------------------------------------


def derive_id(source: str, text: str) -> str:
    """A stable id from origin and content, for inputs that carry none."""
    return hashlib.sha1(f"{source}\n{text}".encode()).hexdigest()[:20]


def to_document(raw: object, inp: InputSpec, default_source: str, locator: str) -> dict | Rejected:
    """One raw input record to a ``document@1`` row, or a rejection saying what is wrong."""
    if not isinstance(raw, dict):
        return Rejected(locator, "not a JSON object", type(raw).__name__)
    text = raw.get(inp.text_field)
    if text is None and inp.text_field == "text" and _is_messages(raw.get("messages")):
        # Chat records (`messages` format): the turns' contents are the text; the turns stay in metadata.
        text = "\n\n".join(str(m.get("content") or "") for m in raw["messages"])
    rid = raw.get(inp.id_field)
    if isinstance(rid, bool) or (rid is not None and not isinstance(rid, str | int)):
        return Rejected(locator, "wrong type", f"'{inp.id_field}' is {type(rid).__name__}, needs a string")
    rid = str(rid) if rid is not None else None
    ref = rid or locator
    if text is None:
        return Rejected(ref, "missing text", f"no '{inp.text_field}' field")
    if not isinstance(text, str):
        return Rejected(ref, "wrong type", f"'{inp.text_field}' is {type(text).__name__}, needs a string")
    if not text.strip():
        return Rejected(ref, "empty text", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return Rejected(ref, "invalid UTF-8", f"character {e.start}: {e.reason}")
    raw_source = raw.get("source")
    source = inp.source or (raw_source if isinstance(raw_source, str) and raw_source else default_source)
    meta = {k: v for k, v in raw.items() if k not in {inp.id_field, inp.text_field, "source", "language",
                                                       "license", "metadata"}}
    if isinstance(raw.get("metadata"), dict):
        meta = {**raw["metadata"], **meta}
    elif isinstance(raw.get("metadata"), str) and raw["metadata"]:
        try:
            loaded = json.loads(raw["metadata"])
            meta = {**loaded, **meta} if isinstance(loaded, dict) else {"metadata": raw["metadata"], **meta}
        except ValueError:
            meta = {"metadata": raw["metadata"], **meta}
    lang = raw.get("language")
    lic = raw.get("license")
    return {
        "id": rid or derive_id(source, text),
        "text": text,
        "source": source,
        "language": lang if isinstance(lang, str) and lang else None,
        "license": lic if isinstance(lic, str) and lic else None,
        "metadata": json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str) if meta else None,
    }


def _is_messages(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def _iter_jsonl(shard: Shard, inp: InputSpec, read: ReadSpec) -> Iterator[dict | Rejected]:
    path = shard.paths[0]
    name = os.path.basename(path)
    source = inp.source or name
    compressed = path.endswith((".gz", ".zst"))
    with _open_binary(path) as raw_f:
        f = io.BufferedReader(raw_f) if compressed else raw_f
        offset = shard.start
        if not compressed and shard.start > 0:
            # A line belongs to the shard in which it starts: skip the tail of the previous one.
            f.seek(shard.start - 1)
            offset = shard.start - 1 + len(f.readline())
        while compressed or shard.end < 0 or offset < shard.end:
            try:
                line = _read_bounded_line(f, read.max_record_bytes)
            except (EOFError, OSError, ValueError) as e:  # gzip/zstd: truncated or damaged stream
                # What was read before the damage is kept; the unreadable rest is one reject, so the
                # run's counts show it and the file can be fixed and read again.
                yield Rejected(f"{name}@{offset}", "truncated or corrupt file",
                               f"{type(e).__name__}: {e}; records after uncompressed byte {offset} could not be read")
                break
            if line is None:
                break
            locator = f"{name}@{offset}"
            offset += line[1]
            data = line[0]
            if data is _TOO_LARGE:
                yield Rejected(locator, "record too large", f"{line[1]} bytes > max_record_bytes "
                               f"({read.max_record_bytes}); payload keeps the first 4 KiB", line[2])
                continue
            if locator.endswith("@0") and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]  # a UTF-8 byte-order mark (editors on Windows write one) is not JSON
            if not data.strip():
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Rejected(locator, "invalid UTF-8", f"byte {e.start}: {e.reason}",
                               data.decode("utf-8", "backslashreplace"))
                continue
            try:
                obj = json.loads(text)
            except ValueError as e:
                yield Rejected(locator, "invalid JSON", str(e)[:200], text)
                continue
            doc = to_document(obj, inp, source, locator)
            yield replace(doc, payload=text) if isinstance(doc, Rejected) else doc


_TOO_LARGE = object()


def _read_bounded_line(f, limit: int):
    """Next line as (bytes, consumed); an over-long line is skipped without holding it in memory."""
    chunk = f.readline(limit + 1)
    if not chunk:
        return None
    if len(chunk) <= limit or (len(chunk) == limit + 1 and chunk.endswith(b"\n")):
        return chunk, len(chunk)
    head = chunk[:4096].decode("utf-8", "backslashreplace")
    consumed = len(chunk)
    while not chunk.endswith(b"\n"):
        chunk = f.readline(MB)
        if not chunk:
            break
        consumed += len(chunk)
    return _TOO_LARGE, consumed, head


def _iter_table_rows(table: pa.Table, inp: InputSpec, source: str, locator_prefix: str, first_row: int):
    for i, row in enumerate(table.to_pylist()):
        yield to_document(row, inp, source, f"{locator_prefix}#{first_row + i}")


def _iter_parquet(shard: Shard, inp: InputSpec, read: ReadSpec) -> Iterator[dict | Rejected]:
    path = shard.paths[0]
    pf = _open_parquet(path)
    name = os.path.basename(path)
    first = sum(pf.metadata.row_group(i).num_rows for i in range(shard.start))
    for rg in range(shard.start, shard.end):
        try:
            table = pf.read_row_group(rg)
        except (pa.ArrowException, OSError) as e:
            rows = pf.metadata.row_group(rg).num_rows
            yield Rejected(f"{name}#rowgroup{rg}", "truncated or corrupt file",
                           f"{type(e).__name__}: {e}; the row group's {rows} records could not be read")
            first += rows
            continue
        yield from _iter_table_rows(table, inp, inp.source or name, name, first)
        first += table.num_rows


def _iter_text(shard: Shard, inp: InputSpec, read: ReadSpec) -> Iterator[dict | Rejected]:
    remote = storage.is_remote(inp.path)
    given = inp.path.rstrip("/") if remote else os.path.expanduser(inp.path)
    root = os.path.commonpath([given] + list(shard.paths)) if shard.paths and not remote else given
    for path in shard.paths:
        if remote:
            rel = path[len(root) + 1:] if path.startswith(root + "/") else os.path.basename(path)
        else:
            rel = os.path.relpath(path, root) if os.path.isdir(root) else os.path.basename(path)
        size = storage.file_size(path)
        if size > read.max_record_bytes:
            yield Rejected(rel, "record too large", f"{size} bytes > max_record_bytes")
            continue
        with storage.open_binary(path) as f:
            data = f.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Rejected(rel, "invalid UTF-8", f"byte {e.start}: {e.reason}")
            continue
        yield to_document({"id": rel, "text": text, "path": rel}, inp, inp.source or "text", rel)


def _iter_hf(shard: Shard, inp: InputSpec, read: ReadSpec) -> Iterator[dict | Rejected]:
    path = shard.paths[0]
    with pa.memory_map(path) as source:
        try:
            table = pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            table = pa.ipc.open_file(source).read_all()
    name = os.path.basename(path)
    yield from _iter_table_rows(table, inp, inp.source or os.path.basename(os.path.dirname(path)), name, 0)


READERS = {"jsonl": _iter_jsonl, "parquet": _iter_parquet, "text": _iter_text, "hf": _iter_hf}


def read_shard(shard: Shard, inputs: list[InputSpec], read: ReadSpec) -> Iterator[dict | Rejected]:
    inp = inputs[shard.input_index]
    yield from READERS[shard.format](shard, inp, read)


def document_schema() -> pa.Schema:
    return DOCUMENT.arrow
