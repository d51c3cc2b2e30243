"""Malformed records go to rejects with a reason and never crash the run (issue 2, point 8)."""

from __future__ import annotations

import json

import duckdb
import pytest

from tests.conftest import run_cli, write_pipeline

PIPELINE = """
name: bad-input
inputs:
  - path: {input}
read:
  shard_mb: 2
  max_record_bytes: 4000000
stages:
  - stage: normalize
  - stage: tokenize
    params: {{tokenizer: smollm2}}
  - stage: exact_dedup
"""


def _bad_lines() -> list[tuple[bytes, str]]:
    """100 malformed lines of the kinds users meet, each with the reason it must be rejected for."""
    bad: list[tuple[bytes, str]] = []
    for k in range(20):
        bad.append((b'{"id": "broken-%d", "text": "unterminated' % k, "invalid JSON"))
    for k in range(20):
        bad.append((b'{"id": "latin1-%d", "text": "caf\xe9 cr\xe8me"}' % k, "invalid UTF-8"))
    for k in range(10):
        bad.append((json.dumps({"id": f"int-text-{k}", "text": 12345}).encode(), "wrong type"))
    for k in range(10):
        bad.append((json.dumps({"id": ["a", k], "text": "a list is no id"}).encode(), "wrong type"))
    for k in range(10):
        bad.append((json.dumps({"id": f"no-text-{k}", "body": "text under another key"}).encode(), "missing text"))
    for k in range(10):
        bad.append((json.dumps({"id": f"empty-{k}", "text": "   \n\t "}).encode(), "empty text"))
    for k in range(10):
        bad.append((json.dumps([f"not-an-object-{k}"]).encode(), "not a JSON object"))
    for k in range(3):
        huge = json.dumps({"id": f"huge-{k}", "text": "x" * (20_000_000 + k)}).encode()
        bad.append((huge, "record too large"))
    for k in range(7):
        bad.append((json.dumps({"id": f"surrogate-{k}", "text": "bad \ud800 half"}).encode(), "invalid UTF-8"))
    assert len(bad) == 100
    return bad


@pytest.fixture(scope="module")
def bad_input_run(real_docs, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = [r for r in real_docs if r["source"] == "kjv"][:1000]
    assert len(good) == 1000 and len({r["text"] for r in good}) == 1000
    bad = _bad_lines()
    lines = [json.dumps({"id": r["id"], "text": r["text"]}).encode() for r in good]
    # Interleave: a bad line after every tenth good one, so every shard meets some.
    mixed = []
    for i, line in enumerate(lines):
        mixed.append(line)
        if i % 10 == 9:
            mixed.append(bad[i // 10][0])
    path = d / "input.jsonl"
    path.write_bytes(b"\n".join(mixed) + b"\n")
    pipeline = write_pipeline(d / "p.yaml", PIPELINE.format(input=path))
    catalog = d / "c.duckdb"
    result = run_cli("run", str(pipeline), "--output", str(d / "out"), "--catalog", str(catalog), "--quiet")
    return result, catalog, bad


def test_run_succeeds_with_exactly_the_good_records(bad_input_run):
    result, catalog, _ = bad_input_run
    assert result.returncode == 0, result.stderr[-2000:]
    con = duckdb.connect(str(catalog), read_only=True)
    assert con.execute("SELECT n_records FROM artifacts WHERE kind = 'output'").fetchone()[0] == 1000


def test_every_bad_record_is_in_rejects_with_its_reason(bad_input_run):
    _, catalog, bad = bad_input_run
    con = duckdb.connect(str(catalog), read_only=True)
    rows = con.execute("SELECT stage, reason, kind, detail FROM rejects").fetchall()
    assert len(rows) == 100
    assert all(kind == "rejected" and reason for _, reason, kind, _ in rows)
    got = sorted(r[1] for r in rows)
    assert got == sorted(reason for _, reason in bad)


def test_stage_stats_reconcile(bad_input_run):
    _, catalog, _ = bad_input_run
    con = duckdb.connect(str(catalog), read_only=True)
    stats = con.execute(
        "SELECT stage, records_in, records_out, records_rejected, records_dropped FROM stage_stats ORDER BY step, rowid"
    ).fetchall()
    assert stats[0][0] == "read" and stats[0][1] == 1100 and stats[0][3] == 100
    for _stage, rin, rout, rej, drop in stats:
        assert rin == rout + rej + drop
    for a, b in zip(stats, stats[1:], strict=False):
        assert a[2] == b[1]


def test_rejected_payloads_are_kept(bad_input_run):
    """Nothing is lost: the rejects file keeps each bad line (the first 4 KiB of a huge one)."""
    import pyarrow.parquet as pq

    result, catalog, _ = bad_input_run
    out = catalog.parent / "out" / ".longforge" / "rejects.parquet"
    t = pq.read_table(out).to_pylist()
    assert len(t) == 100 and all(r["payload"] for r in t)
    assert any(r["payload"].startswith('{"id": "broken-0"') for r in t)


def test_duplicate_ids_are_reported(tmp_path):
    (tmp_path / "d.jsonl").write_text(
        '{"id": "a", "text": "first text"}\n{"id": "a", "text": "another text"}\n{"id": "b", "text": "third"}\n')
    pipeline = write_pipeline(tmp_path / "p.yaml", f"""
        name: dup-ids
        inputs: [{{path: {tmp_path / 'd.jsonl'}}}]
        stages:
          - stage: normalize
        """)
    r = run_cli("run", str(pipeline), "--output", str(tmp_path / "out"), "--catalog", str(tmp_path / "c.duckdb"))
    assert r.returncode == 0 and "1 records share their id" in r.stderr and "['a']" in r.stderr
    con = duckdb.connect(str(tmp_path / "c.duckdb"), read_only=True)
    row = con.execute("SELECT value FROM metrics WHERE stage = 'publish' AND name = 'duplicate_ids'").fetchone()
    assert row == (1,)
