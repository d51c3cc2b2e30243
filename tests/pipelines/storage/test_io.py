"""Readers agree across formats; sharding reads every record exactly once; writes are atomic."""

from __future__ import annotations

import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.spec import InputSpec, ReadSpec
from pipelines.storage.readers import plan_shards, read_shard
from schemas.files import write_parquet_atomic
from stages.base import Rejected
from tests.conftest import write_jsonl


def read_all(path: str, fmt: str = "auto", shard_mb: float = 64.0) -> tuple[list, list]:
    inputs = [InputSpec(path=path, format=fmt)]
    read = ReadSpec(shard_mb=shard_mb)
    docs, rejects = [], []
    for shard in plan_shards(inputs, read):
        for item in read_shard(shard, inputs, read):
            (rejects if isinstance(item, Rejected) else docs).append(item)
    return docs, rejects


@pytest.fixture(scope="module")
def sample(real_docs):
    return [{"id": r["id"], "text": r["text"]} for r in real_docs[::5]]


def _key(docs):
    return sorted((d["id"], d["text"]) for d in docs)


def test_jsonl_gz_zst_parquet_hf_and_text_read_the_same(sample, tmp_path):
    import datasets
    import zstandard

    plain = write_jsonl(tmp_path / "d.jsonl", sample)
    with gzip.open(tmp_path / "d.jsonl.gz", "wb") as f:
        f.write(plain.read_bytes())
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    pq.write_table(pa.Table.from_pylist(sample), tmp_path / "d.parquet", row_group_size=50)
    datasets.Dataset.from_list(sample).save_to_disk(str(tmp_path / "hf"))
    text_dir = tmp_path / "texts"
    for d in sample:
        p = text_dir / d["id"]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(d["text"], encoding="utf-8")
    expected = _key(sample)
    for path in ("d.jsonl", "d.jsonl.gz", "d.jsonl.zst", "d.parquet", "hf"):
        docs, rejects = read_all(str(tmp_path / path))
        assert not rejects and _key(docs) == expected, path
    docs, rejects = read_all(str(text_dir), fmt="text")
    assert not rejects and _key(docs) == expected  # ids are the files' relative paths


@pytest.mark.parametrize("shard_mb", [0.01, 0.05, 0.3])
def test_byte_range_shards_read_each_line_exactly_once(sample, tmp_path, shard_mb):
    path = write_jsonl(tmp_path / "d.jsonl", sample)
    shards = plan_shards([InputSpec(path=str(path))], ReadSpec(shard_mb=shard_mb))
    assert len(shards) == -(-os.path.getsize(path) // int(shard_mb * (1 << 20)))
    docs, _ = read_all(str(path), shard_mb=shard_mb)
    assert [d["id"] for d in docs] == [d["id"] for d in sample]


def test_parquet_row_group_shards(sample, tmp_path):
    pq.write_table(pa.Table.from_pylist(sample), tmp_path / "d.parquet", row_group_size=20)
    shards = plan_shards([InputSpec(path=str(tmp_path / "d.parquet"))], ReadSpec(shard_mb=0.05))
    assert len(shards) > 1
    docs, _ = read_all(str(tmp_path / "d.parquet"), shard_mb=0.05)
    assert [d["id"] for d in docs] == [d["id"] for d in sample]


def test_missing_ids_are_derived_from_content_and_extra_fields_kept(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "alpha beta", "title": "T", "n": 3},
                                              {"text": "alpha beta", "source": "elsewhere"}])
    docs, _ = read_all(str(path))
    assert docs[0]["id"] != docs[1]["id"]  # same text, other origin
    again, _ = read_all(str(path))
    assert [d["id"] for d in again] == [d["id"] for d in docs]
    assert json.loads(docs[0]["metadata"]) == {"n": 3, "title": "T"}
    assert docs[1]["source"] == "elsewhere"


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no files"):
        plan_shards([InputSpec(path=str(tmp_path / "nope.jsonl"))], ReadSpec())


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "x.parquet"
    bad = pa.table({"a": [1, 2]})

    class Boom(Exception):
        pass

    import pyarrow.parquet as real_pq

    original = real_pq.write_table

    def failing(table, where, **kw):
        open(where, "wb").write(b"partial")
        raise Boom()

    real_pq.write_table = failing
    try:
        with pytest.raises(Boom):
            write_parquet_atomic(bad, target)
    finally:
        real_pq.write_table = original
    assert not target.exists()
    write_parquet_atomic(bad, target)
    assert pq.read_table(target).num_rows == 2
