"""Runs always end in a final state (issue 11, 10): a reader of the catalog makes a run wait, a
signal leaves it interrupted and resumable, two runs cannot share an output, a catalog that cannot be
written gets the final state later, a run killed outright is marked by the next writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from catalog import Catalog
from tests.conftest import LONGFORGE, REPO, write_jsonl, write_pipeline
from tests.pipelines.safety_helpers import PIPELINE, _catalog_rows, _digest_tree, _run

# -- 10. the catalog never left lying ------------------------------------------------------------------------


def _popen_run(pipeline: Path, tmp_path: Path, *args: str, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO), **kw.pop("env", {})}
    return subprocess.Popen([*LONGFORGE, "run", str(pipeline), "--catalog", str(tmp_path / "c.duckdb"), "--quiet",
                             *args], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_reader_opening_the_catalog_mid_run_makes_the_run_wait_not_lie(real_docs, tmp_path):
    src, p = _slow_run(real_docs, tmp_path)
    out = tmp_path / "out"
    proc = _popen_run(p, tmp_path, "--input", str(src), "--output", str(out))
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".longforge/work/*/shard-00001.done.json")):
        time.sleep(0.05)
    reader = None
    while reader is None and time.time() < deadline:  # a notebook opens it while the run works
        try:
            reader = duckdb.connect(str(tmp_path / "c.duckdb"), read_only=True)
        except duckdb.Error:
            time.sleep(0.05)
    time.sleep(6)  # the run finishes its work meanwhile, and then needs the catalog
    assert proc.poll() is None  # working or waiting for the catalog, not failed
    reader.close()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert _catalog_rows(tmp_path, "SELECT status FROM runs") == [("succeeded",)]
    assert _catalog_rows(tmp_path, "SELECT count(*) > 0 FROM stage_stats") == [(True,)]


def _slow_run(real_docs, tmp_path: Path) -> tuple[Path, Path]:
    """1,500 real documents in 0.05 MB shards, tokenised: long enough to stop in the middle."""
    rows = [{"id": r["id"], "text": r["text"]} for r in real_docs[:1500]]
    src = write_jsonl(tmp_path / "a.jsonl", rows)
    p = write_pipeline(tmp_path / "p.yaml", """
        name: slow
        read: {shard_mb: 0.05}
        stages:
          - stage: normalize
          - stage: tokenize
            params: {tokenizer: smollm2}
        """)
    return src, p


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_leave_the_run_interrupted_and_resumable(real_docs, tmp_path, sig, code):
    src, p = _slow_run(real_docs, tmp_path)
    out = tmp_path / "out"
    # The run waits after its second shard (engine.fault_point), so the signal lands mid-run even
    # when a loaded machine starves this loop for longer than the rest of the run takes.
    proc = _popen_run(p, tmp_path, "--input", str(src), "--output", str(out),
                      env={"LONGFORGE_PAUSE_AT": "segment:0:1"})
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".longforge/work/*/shard-00001.done.json")):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "rerun the same command to resume" in err
    assert _catalog_rows(tmp_path, "SELECT status FROM runs") == [("interrupted",)]
    assert (out / ".longforge" / "lock").read_text() == ""  # released: the next run takes it at once
    r = _run(p, tmp_path, "--input", str(src), "--output", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    clean = _run(p, tmp_path, "--input", str(src), "--output", str(tmp_path / "clean"))
    assert clean.returncode == 0
    assert _digest_tree(out / "data") == _digest_tree(tmp_path / "clean" / "data")


def test_two_runs_on_one_output_cannot_both_take_the_lock(real_docs, tmp_path):
    src, p = _slow_run(real_docs, tmp_path)
    out = tmp_path / "out"
    procs = [_popen_run(p, tmp_path, "--input", str(src), "--output", str(out)) for _ in range(3)]
    results = [(proc.wait(timeout=300), proc.stderr.read()) for proc in procs]
    codes = sorted(code for code, _ in results)
    assert codes.count(0) >= 1 and all(c in (0, 1) for c in codes), results
    for code, err in results:
        if code == 1:
            assert "is writing to" in err
    statuses = [s for (s,) in _catalog_rows(tmp_path, "SELECT status FROM runs")]
    assert "running" not in statuses and statuses.count("succeeded") == codes.count(0)
    clean = _run(p, tmp_path, "--input", str(src), "--output", str(tmp_path / "clean"))
    assert clean.returncode == 0
    assert _digest_tree(out / "data") == _digest_tree(tmp_path / "clean" / "data")


def test_a_catalog_that_cannot_be_written_at_the_end_gets_the_final_state_later(docs, tmp_path, monkeypatch):
    """The disk under the catalog fills mid-run: the run's end cannot be written. Its state waits in a
    journal beside the catalog and lands at the next write, so no row stays 'running'."""
    from pipelines.driver import run_pipeline
    from pipelines.engine.plan import build_plan
    from pipelines.engine.progress import Progress
    from pipelines.spec import load_pipeline

    src = write_jsonl(tmp_path / "a.jsonl", docs)
    catalog = Catalog(str(tmp_path / "c.duckdb"))
    plan = build_plan(load_pipeline(write_pipeline(tmp_path / "p.yaml", PIPELINE)), inputs=[str(src)],
                      output=str(tmp_path / "out"))
    real_open = Catalog._open
    calls = {"n": 0}

    def full_disk(self, read_only, config=None):
        calls["n"] += 1
        if calls["n"] > 2 and not read_only:  # start_run and the output check went through
            raise duckdb.IOException("IO Error: No space left on device")
        return real_open(self, read_only, config)

    monkeypatch.setattr(Catalog, "_open", full_disk)
    with pytest.raises(duckdb.IOException):
        run_pipeline(plan, catalog=catalog, progress=Progress(enabled=False))
    monkeypatch.setattr(Catalog, "_open", real_open)
    assert catalog.pending_path.exists()
    assert catalog.query("SELECT status, error FROM runs")[1][0][0] == "failed"
    assert "No space left" in catalog.query("SELECT error FROM runs")[1][0][0]
    assert not catalog.pending_path.exists()


def test_a_run_killed_outright_is_marked_interrupted_by_the_next_writer(docs, pipeline, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", docs)
    cat = Catalog(str(tmp_path / "c.duckdb"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    cat.start_run("run-dead", pipeline="x", pipeline_file="", runner="local", workers=1, spec_fingerprint="",
                  seed=0, params={}, code_version="", output_path=str(tmp_path / "elsewhere"))
    with cat.connect() as con:  # as if a SIGKILLed process had written it
        con.execute("UPDATE runs SET pid = ? WHERE run_id = 'run-dead'", [int(dead.stdout)])
    assert _run(pipeline, tmp_path, "--input", str(src), "--output", str(tmp_path / "out")).returncode == 0
    assert cat.query("SELECT status FROM runs WHERE run_id = 'run-dead'")[1] == [("interrupted",)]


def test_the_output_lock_is_held_by_the_kernel_not_by_a_check_then_write(docs, pipeline, tmp_path):
    from pipelines.engine.output_guard import release_lock as _release_lock
    from pipelines.engine.output_guard import take_output_lock as _take_output_lock
    from pipelines.engine.plan import build_plan
    from pipelines.spec import load_pipeline

    src = write_jsonl(tmp_path / "a.jsonl", docs)
    out = tmp_path / "out"
    plan = build_plan(load_pipeline(pipeline), inputs=[str(src)], output=str(out))
    fd = _take_output_lock(plan, Catalog(str(tmp_path / "c.duckdb")))
    try:
        (out / ".longforge" / "lock").write_text("")  # even an emptied lock file is still held
        r = _run(pipeline, tmp_path, "--input", str(src), "--output", str(out))
        assert r.returncode == 1 and "is writing to" in r.stderr
        assert not (tmp_path / "c.duckdb").exists()  # refused before a run row was written
    finally:
        _release_lock(fd)
    assert _run(pipeline, tmp_path, "--input", str(src), "--output", str(out)).returncode == 0
