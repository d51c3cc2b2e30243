"""`longforge catalog query` reads and cannot write (issue 32, point 1): the query that may read the
artifacts' files runs in a process the kernel forbids to write (catalog/no_writes.py), so a write
disguised as a read (``EXPLAIN ANALYZE COPY ... TO``) fails however the statement check reads it."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, normalized_run, run_cli


def _digest_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(real_docs, tmp_path_factory):
    base = tmp_path_factory.mktemp("sandbox")
    _, _, out = normalized_run(real_docs, base, 20)
    return base, out


def test_explain_analyze_copy_cannot_overwrite_a_dataset_an_input_or_the_run_record(finished_run):
    base, out = finished_run
    data = next((out / "data").glob("*.parquet"))
    targets = [f"'{data}' (FORMAT parquet)", f"'{out / '.longforge' / 'run.json'}' (FORMAT csv)",
               f"'{base / 'in.jsonl'}' (FORMAT json)", f"'{out / 'data' / 'train-00009-of-00010.parquet'}'"]
    before = _digest_tree(base)
    for target in targets:
        r = run_cli("catalog", "--catalog", str(base / "c.duckdb"), "query",
                    f"EXPLAIN ANALYZE COPY (SELECT 'x' AS id) TO {target}")
        assert r.returncode == 2, (target, r.stdout, r.stderr)
        assert "writes no file" in r.stderr or "disabled by configuration" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    # A plain EXPLAIN shows the plan and runs nothing.
    r = run_cli("catalog", "--catalog", str(base / "c.duckdb"), "query",
                f"EXPLAIN COPY (SELECT 1 AS x) TO {targets[0]}")
    assert r.returncode == 0 and "COPY" in r.stdout.upper(), r.stderr
    assert _digest_tree(base) == before  # nothing overwritten, nothing added
    # Reading an artifact's records, what the query is for, still works.
    r = run_cli("catalog", "--catalog", str(base / "c.duckdb"), "query",
                f"SELECT count(*) AS n FROM read_parquet('{out}/data/*.parquet')", "--format", "csv")
    assert r.returncode == 0 and r.stdout.split() == ["n", "20"], r.stderr


def test_the_guard_is_the_process_not_the_statement_check(finished_run):
    """The child that runs user queries, given a plain COPY (the statement check would refuse it
    first): the write fails in the kernel, and the dataset is the same bytes."""
    base, out = finished_run
    data = next((out / "data").glob("*.parquet"))
    before = _digest_tree(out)
    request = {"catalog": str(base / "c.duckdb"), "params": [], "config": {}, "sandbox": {},
               "dirs": [str(out) + os.sep], "files": [],
               "sql": f"COPY (SELECT 'x' AS id) TO '{data}' (FORMAT parquet)"}
    done = subprocess.run([sys.executable, "-m", "catalog.sandboxed_query"], input=json.dumps(request).encode(),
                          capture_output=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 0, done.stderr
    answer = pickle.loads(done.stdout)
    assert answer[0] == "error" and "Operation not permitted" in answer[1], answer
    assert _digest_tree(out) == before


def test_a_process_that_forbade_writes_reads_but_cannot_write_from_any_thread(tmp_path):
    target = tmp_path / "kept.txt"
    target.write_text("kept")
    script = textwrap.dedent(f"""
        import os, threading
        from catalog.no_writes import forbid_writes
        forbid_writes()
        results = {{"read": open({str(target)!r}).read()}}
        attempts = {{
            "write": lambda: open({str(target)!r}, "w"),
            "append": lambda: open({str(target)!r}, "a"),
            "read-write": lambda: open({str(target)!r}, "r+"),
            "create": lambda: open({str(tmp_path / 'new.txt')!r}, "x"),
            "delete": lambda: os.unlink({str(target)!r}),
            "rename": lambda: os.rename({str(target)!r}, {str(tmp_path / 'moved.txt')!r}),
            "truncate": lambda: os.truncate({str(target)!r}, 0),
            "folder": lambda: os.mkdir({str(tmp_path / 'made')!r}),
            "link": lambda: os.link({str(target)!r}, {str(tmp_path / 'linked.txt')!r}),
            "mode": lambda: os.chmod({str(target)!r}, 0o777),
        }}
        def attempt(name, f):
            try:
                f()
                results[name] = "done"
            except OSError as e:
                results[name] = e.errno
        for name, f in attempts.items():
            attempt(name, f)
        t = threading.Thread(target=attempt, args=("thread-write", attempts["write"]))
        t.start()
        t.join()
        print(results)
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert done.returncode == 0, done.stderr
    results = eval(done.stdout)  # noqa: S307 - a dict this test printed
    assert results.pop("read") == "kept"
    assert results and all(v == 1 for v in results.values()), results  # EPERM, every one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]
    assert target.read_text() == "kept" and oct(target.stat().st_mode)[-3:] != "777"


def test_the_query_child_imports_nothing_from_the_working_folder_and_answers_long_queries(finished_run, tmp_path):
    """Review findings: a json.py where the user stands must not run before the filter (python -P),
    and DuckDB's progress bar (printed to stdout after ~2 s) must not spoil the answer."""
    base, _ = finished_run
    (tmp_path / "json.py").write_text("open(__file__ + '.PWNED', 'w').close()\n")
    # the command as its console script runs it: nothing of the working folder on its own path (-P)
    r = subprocess.run([sys.executable, "-P", "-m", "pipelines.commands.main", "catalog", "--catalog",
                        str(base / "c.duckdb"), "query", "SELECT 1 AS one", "--format", "csv"], cwd=tmp_path,
                       capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["one", "1"], r.stderr
    assert not list(tmp_path.glob("*.PWNED"))
    r = run_cli("catalog", "--catalog", str(base / "c.duckdb"), "query",
                "SELECT count(*) AS n FROM range(400000000) WHERE hash(range) % 7 = 0", "--format", "csv",
                env={"DUCKDB_THREADS": "1"}, timeout=300)
    assert r.returncode == 0 and r.stdout.split()[0] == "n", r.stderr[-2000:]
