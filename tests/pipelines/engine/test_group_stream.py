"""A group task's partition as a stream (issue 35, point 3): the parts a shard writes come back
row group by row group, the shards' parts merge in (group, place, shard, row) order, and each
group reaches ``build`` as an iterator that the engine counts and checks was read to the end."""

from __future__ import annotations

import heapq
import random
from operator import itemgetter

import numpy as np
import pyarrow as pa
import pytest

from pipelines.engine.accounting import StageCounter
from pipelines.engine.publish import write_row_group_runs
from pipelines.engine.shapes.group_step import _shard_stream, build_groups, partition_row_groups
from stages.base import Dropped, GroupStage


def _parts(path, rows: list[tuple[int, str, int]], n_parts: int, max_rows: int) -> dict:
    """A shard's parts file as the segment writes it: (partition, group, place, row) sorted."""
    rows = sorted(rows)
    table = pa.table({"text": [f"{g}/{o}" for _, g, o in rows], "__group": [g for _, g, _ in rows],
                      "__order": pa.array([o for _, _, o in rows], pa.int64()),
                      "__row": pa.array(range(len(rows)), pa.int64())})
    which = np.array([p for p, _, _ in rows], dtype=np.int64)
    return {"parts": {str(p): v for p, v in write_row_group_runs(table, which, n_parts, path, max_rows).items()}}


def test_shards_parts_merge_in_group_place_shard_row_order_a_row_group_at_a_time(tmp_path):
    rng = random.Random(3)
    shards = []
    for i in range(3):
        rows = [(rng.randrange(2), f"g{rng.randrange(4)}", rng.randrange(50)) for _ in range(40)]
        marker = _parts(tmp_path / f"parts-{i}.parquet", rows, 2, max_rows=3)
        shards.append((rows, marker))
    for p in range(2):
        sources = []
        for i, (_, marker) in enumerate(shards):
            groups = partition_row_groups(marker, p)
            assert all(b - a == 1 for a, b in zip(groups, groups[1:], strict=False))  # consecutive row groups
            sources.append(_shard_stream(tmp_path / f"parts-{i}.parquet", groups, i, lambda t: t.to_pylist()))
        merged = list(heapq.merge(*sources, key=itemgetter(0)))
        keys = [k for k, _ in merged]
        assert keys == sorted(keys)
        expected = sorted((g, o) for rows, _ in shards for q, g, o in rows if q == p)
        assert [(k[0], k[1]) for k in keys] == expected
        assert all(rec["text"] == f"{k[0]}/{k[1]}" for k, rec in merged)


def test_an_older_marker_naming_one_row_group_still_reads():
    assert partition_row_groups({"parts": {"1": 4}}, 1) == [4]
    assert partition_row_groups({"parts": {"1": [2, 3]}}, 1) == [2, 3, 4]
    assert partition_row_groups({"parts": {}}, 1) == []


class _Keeper(GroupStage):
    """Keeps the records with an even place, drops the odd; with ``stop``, leaves a group unread."""

    name = "keeper_for_test"

    def __init__(self, stop: bool = False):
        super().__init__(None, 0)
        self.stop, self.kinds = stop, set()

    def build(self, key, records, metrics):
        self.kinds.add(type(records).__name__)
        for r in records:
            if r["n"] % 2:
                yield Dropped(r["id"], "odd", "")
            else:
                yield r
            if self.stop:
                return


def _stream(n: int):
    return (((f"g{k // 4}", k, 0, k), {"id": f"r{k}", "n": k}) for k in range(n))


def test_each_group_reaches_build_as_a_stream_and_every_record_is_counted():
    stage = _Keeper()
    counter, removed = StageCounter(0, "keeper_for_test", "per-group"), []
    out = list(build_groups(stage, "keeper_for_test", _stream(10), counter, removed, {}, {}))
    assert [r["n"] for r in out] == [0, 2, 4, 6, 8]
    assert "list" not in stage.kinds
    assert (counter.n_in, counter.n_out, counter.dropped, counter.inputs_with_output) == (10, 5, 5, 5)
    assert sorted(r["record_id"] for r in removed) == sorted(f"r{k}" for k in (1, 3, 5, 7, 9))


def test_a_build_that_leaves_records_unread_is_an_error():
    with pytest.raises(RuntimeError, match="did not read 3 records of group 'g0'"):
        list(build_groups(_Keeper(stop=True), "keeper_for_test", _stream(8), StageCounter(0, "k", "per-group"),
                          [], {}, {}))
