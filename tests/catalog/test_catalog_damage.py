"""A catalog left damaged, or written by a newer longforge, gives a clear answer and loses nothing
(issue 32, points 8 and 13)."""

from __future__ import annotations

import json
import shutil

import duckdb
import pytest

from catalog import Catalog
from tests.conftest import normalized_run, run_cli


@pytest.fixture(scope="module")
def one_run(real_docs, tmp_path_factory):
    base = tmp_path_factory.mktemp("damage")
    pipe, src, _ = normalized_run(real_docs, base, 10)
    return base, pipe, src


def _copy(one_run, tmp_path):
    base, pipe, src = one_run
    shutil.copy(base / "c.duckdb", tmp_path / "c.duckdb")
    return tmp_path / "c.duckdb", pipe, src


def test_a_journal_cut_short_is_skipped_with_a_warning_and_its_good_lines_applied(one_run, tmp_path):
    catalog, pipe, src = _copy(one_run, tmp_path)
    Catalog(str(catalog)).start_run("run-left-running", pipeline="x", pipeline_file="x.yaml", runner="local",
                                    workers=1, spec_fingerprint="f", seed=0, params={}, code_version="v",
                                    output_path=str(tmp_path / "x"))
    good = {"run_id": "run-left-running", "status": "interrupted", "error": "KeyboardInterrupt",
            "at": "2026-12-03T10:00:00"}
    pending = tmp_path / "c.duckdb.pending.jsonl"
    pending.write_text(json.dumps(good) + "\n" + '{"run_id": "run-other", "status": "interr')  # the disk filled
    r = run_cli("catalog", "--catalog", str(catalog), "runs", "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert "line 2 is damaged" in r.stderr and "Traceback" not in r.stderr
    statuses = dict(duckdb.connect(str(catalog), read_only=True).execute("SELECT run_id, status FROM runs").fetchall())
    assert statuses["run-left-running"] == "interrupted"
    assert not pending.exists()
    # and the next run goes on as usual
    r = run_cli("run", str(pipe), "--input", str(src), "--output", str(tmp_path / "out"), "--catalog", str(catalog),
                "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("version", ["7", "banana"])
def test_a_catalog_of_another_schema_version_is_refused_and_left_as_it_is(one_run, tmp_path, version):
    catalog, pipe, src = _copy(one_run, tmp_path)
    con = duckdb.connect(str(catalog))
    con.execute("UPDATE catalog_meta SET value = ? WHERE key = 'schema_version'", [version])
    con.close()
    before = catalog.read_bytes()
    for args in (["catalog", "--catalog", str(catalog), "runs"],
                 ["run", str(pipe), "--input", str(src), "--output", str(tmp_path / "out"), "--catalog",
                  str(catalog), "--quiet"]):
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert f"schema version '{version}'" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert catalog.read_bytes() == before
    assert not (tmp_path / "out" / "data").exists()  # refused before any work
