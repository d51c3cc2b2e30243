"""A run killed with SIGKILL resumes: the rerun does only the missing shards and matches an
uninterrupted run (issue 2, point 9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import duckdb
import pytest

from tests.conftest import LONGFORGE, REPO, run_cli, write_jsonl, write_pipeline

PIPELINE = """
name: resume
inputs:
  - path: {input}
read:
  shard_mb: 0.1
stages:
  - stage: normalize
  - stage: language_id
  - stage: tokenize
  - stage: exact_dedup
  - stage: sentence_split
"""


def _markers(out):
    return sorted((out / ".longforge" / "work").glob("step-00-*/shard-*.done.json"))


@pytest.mark.parametrize("runner", [["--runner", "local"], ["--runner", "beam", "--workers", "2"]],
                         ids=["local", "beam-2-workers"])
def test_sigkill_then_rerun_matches_uninterrupted_run(real_docs, tmp_path, runner):
    docs = [{"id": r["id"], "text": r["text"]} for r in real_docs]
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    pipeline = write_pipeline(tmp_path / "p.yaml", PIPELINE.format(input=src))
    catalog = tmp_path / "c.duckdb"
    killed_out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([*LONGFORGE, "run", str(pipeline), "--output", str(killed_out), "--catalog",
                             str(catalog), "--quiet", *runner], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while len(_markers(killed_out)) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, as a machine failure would
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = {p: p.stat().st_mtime_ns for p in _markers(killed_out)}
    n_shards = len(list((killed_out / ".longforge" / "work").glob("step-00-*/")))
    assert n_shards == 1
    total = _count_shards(pipeline, src)
    assert 3 <= len(done_before) < total, "the kill must land mid-run"

    resumed = run_cli("run", str(pipeline), "--output", str(killed_out), "--catalog", str(catalog), "--quiet",
                      *runner)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # Finished shards were not redone.
    for p, mtime in done_before.items():
        assert p.stat().st_mtime_ns == mtime
    assert len(_markers(killed_out)) == total

    clean = run_cli("run", str(pipeline), "--output", str(tmp_path / "clean"), "--catalog", str(catalog), "--quiet")
    assert clean.returncode == 0, clean.stderr[-2000:]
    con = duckdb.connect(str(catalog), read_only=True)
    rows = con.execute(
        "SELECT status, count(*) FROM runs GROUP BY status ORDER BY status").fetchall()
    # The killed run could not say so itself; the rerun found its lock and marked it.
    assert dict(rows) == {"interrupted": 1, "succeeded": 2}
    fps = con.execute("SELECT fingerprint, n_records FROM artifacts WHERE kind = 'output'").fetchall()
    assert len(fps) == 2 and fps[0] == fps[1]
    killed_files = sorted((killed_out / "data").glob("*.parquet"))
    clean_files = sorted((tmp_path / "clean" / "data").glob("*.parquet"))
    assert [f.read_bytes() for f in killed_files] == [f.read_bytes() for f in clean_files]


def _count_shards(pipeline, src) -> int:
    from pipelines.engine.plan import build_plan
    from pipelines.spec import load_pipeline

    return len(build_plan(load_pipeline(pipeline)).shards)


def test_changed_parameters_do_not_reuse_stale_shards(real_docs, tmp_path):
    docs = [{"id": r["id"], "text": r["text"]} for r in real_docs[:200]]
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    out = tmp_path / "out"
    first = write_pipeline(tmp_path / "a.yaml", PIPELINE.format(input=src))
    assert run_cli("run", str(first), "--output", str(out), "--catalog", str(tmp_path / "c.duckdb"),
                   "--quiet").returncode == 0
    second = write_pipeline(tmp_path / "b.yaml", PIPELINE.format(input=src).replace(
        "  - stage: normalize\n", "  - stage: normalize\n  - stage: length_filter\n    params: {min_chars: 2000}\n"))
    result = run_cli("run", str(second), "--output", str(out), "--catalog", str(tmp_path / "c.duckdb"), "--quiet")
    assert result.returncode == 2 and "--overwrite" in result.stderr  # a finished dataset is not replaced unasked
    result = run_cli("run", str(second), "--output", str(out), "--catalog", str(tmp_path / "c.duckdb"), "--quiet",
                     "--overwrite")
    assert result.returncode == 0, result.stderr
    import pyarrow.parquet as pq

    t = pq.read_table(str(out / "data")).to_pylist()
    assert t and all(len(r["text"]) >= 2000 for r in t)
    assert len(t) < 200



EMBED_PIPELINE = """
name: embed-resume
inputs:
  - path: {input}
read:
  shard_mb: 0.4
stages:
  - stage: normalize
  - stage: icp_embed
    params: {{batch_size: 4}}
"""


def test_sigkill_during_a_model_stage_never_embeds_a_document_twice(real_docs, tmp_path):
    """Killed mid-shard inside icp_embed: the rerun reads the finished batches back (the catalog's
    metrics say how many) and computes only the rest, and the output equals a clean run's."""
    docs = [{"id": r["id"], "text": r["text"][:2000]} for r in real_docs if r["source"] == "kjv"][:400]
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    pipeline = write_pipeline(tmp_path / "p.yaml", EMBED_PIPELINE.format(input=src))
    catalog = tmp_path / "c.duckdb"
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([*LONGFORGE, "run", str(pipeline), "--output", str(out), "--catalog", str(catalog),
                             "--quiet"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    batches = out / ".longforge" / "work"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        folders = list(batches.glob("step-*/batches/shard-*"))
        if any(len(list(f.glob("icp_embed-batch-*.json"))) >= 2 for f in folders):
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = {p: p.stat().st_mtime_ns for p in batches.glob("step-*/batches/shard-*/icp_embed-batch-*.json")}
    assert len(saved) >= 2, "the kill must land inside a shard of the model stage"

    resumed = run_cli("run", str(pipeline), "--output", str(out), "--catalog", str(catalog), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    clean = run_cli("run", str(pipeline), "--output", str(tmp_path / "clean"), "--catalog", str(catalog), "--quiet")
    assert clean.returncode == 0, clean.stderr[-2000:]
    con = duckdb.connect(str(catalog), read_only=True)
    m = {(out_path.split("/")[-1], name): v for out_path, name, v in con.execute(
        "SELECT r.output_path, m.name, m.value FROM metrics m JOIN runs r USING (run_id) "
        "WHERE m.stage = 'icp_embed' AND r.status = 'succeeded'").fetchall()}
    # The rerun read back exactly the batches the kill left and computed only the others: with the
    # shards the killed run finished, every batch was computed once, as in a clean run.
    assert m[("killed", "batches_reused")] == len(saved) and m[("clean", "batches_reused")] == 0
    assert m[("killed", "batches_computed")] + m[("killed", "batches_reused")] == m[("clean", "batches_computed")]
    fps = con.execute("SELECT fingerprint FROM artifacts WHERE kind = 'output' ORDER BY path").fetchall()
    assert len(fps) == 2 and fps[0] == fps[1]


SHAPES_PIPELINE = """
name: shapes
inputs:
  - path: {input}
read:
  shard_mb: 0.05
stages:
  - stage: normalize
  - stage: icp_embed
    params: {{model: minilm, max_tokens: 64, batch_size: 16}}
  - stage: icp_knn
    params: {{k: 5}}
  - stage: icp_dedup
  - stage: icp_order
  - stage: icp_pack
    params: {{context_length: 512, range_docs: 20}}
"""


@pytest.fixture(scope="module")
def shapes_setup(real_docs, tmp_path_factory):
    """A small ICP pipeline, which has every shape: per-record (a model stage), global (kNN, dedup,
    order) and per-group (contexts over ranges of the order); its clean run's fingerprint."""
    from pipelines.engine.plan import build_plan
    from pipelines.spec import load_pipeline

    base = tmp_path_factory.mktemp("shapes")
    docs = [{"id": r["id"], "text": r["text"][:1500]} for r in real_docs if r["source"] == "kjv"][:160]
    src = write_jsonl(base / "docs.jsonl", docs)
    pipeline = write_pipeline(base / "p.yaml", SHAPES_PIPELINE.format(input=src))
    plan = build_plan(load_pipeline(pipeline))
    clean = run_cli("run", str(pipeline), "--output", str(base / "clean"), "--catalog", str(base / "c.duckdb"),
                    "--quiet")
    assert clean.returncode == 0, clean.stderr[-2000:]
    assert len(plan.shards) >= 4
    return base, pipeline, plan


def _run_metrics(catalog, out):
    con = duckdb.connect(str(catalog), read_only=True)
    rows = con.execute("SELECT m.stage, m.name, m.value FROM metrics m JOIN runs r USING (run_id) "
                       "WHERE r.output_path = ? AND r.status = 'succeeded'", [str(out.resolve())]).fetchall()
    fp = con.execute("SELECT fingerprint FROM artifacts WHERE kind = 'output' AND path = ?",
                     [str(out.resolve())]).fetchall()
    con.close()
    return {(s, n): v for s, n, v in rows}, fp


@pytest.mark.parametrize("shape", ["record", "global", "group"])
def test_sigkill_during_each_shape_redoes_only_unfinished_work(shapes_setup, shape):
    """The process is SIGKILLed right after one piece of work of a step of each shape (a shard of
    the model stage's segment, the dedup global step, a partition of the pack group step); the same
    command then gives the clean run's fingerprint, and the catalog says what it found finished
    (the markers carry the run that did each piece) and that no embedding was computed twice."""
    from pipelines.engine.plan import StepKind

    base, pipeline, plan = shapes_setup
    catalog = base / "c.duckdb"
    steps = {"record": next(s for s in plan.steps if s.kind is StepKind.SEGMENT),
             "global": next(s for s in plan.steps if s.kind is StepKind.GLOBAL and s.central.name == "icp_dedup"),
             "group": next(s for s in plan.steps if s.kind is StepKind.GROUP)}
    step = steps[shape]
    task = 2 if shape != "global" else 0
    out = base / f"killed-{shape}"
    killed = run_cli("run", str(pipeline), "--output", str(out), "--catalog", str(catalog), "--quiet",
                     env={"LONGFORGE_KILL_AT": f"{step.kind.value}:{step.index}:{task}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "data").exists()
    resumed = run_cli("run", str(pipeline), "--output", str(out), "--catalog", str(catalog), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    m, fp = _run_metrics(catalog, out)
    clean_m, clean_fp = _run_metrics(catalog, base / "clean")
    assert fp == clean_fp
    n = len(plan.shards)
    before = [s for s in plan.steps if s.index < step.index]
    tasks_before = sum(n for s in before if s.kind in (StepKind.SEGMENT, StepKind.GROUP))
    driver_before = sum(1 for s in before if s.kind in (StepKind.GLOBAL, StepKind.DECIDE))
    done = task + 1
    if step.kind is StepKind.GLOBAL:
        assert m[("resume", "driver_steps_reused")] == driver_before + 1
        assert m[("resume", "tasks_reused")] == tasks_before
    else:
        assert m[("resume", "tasks_reused")] == tasks_before + done
        assert m[("resume", "driver_steps_reused")] == driver_before
    assert m[("resume", "tasks_run")] + m[("resume", "tasks_reused")] == clean_m[("resume", "tasks_run")]
    embedded = m.get(("icp_embed", "batches_computed"), 0)
    if shape == "record":  # the three shards the killed run finished are not embedded again
        finished = sum(
            json.loads(p.read_text())["batches"]["icp_embed"]["batches_computed"]
            for p in sorted((out / ".longforge" / "work").glob(f"step-{step.index:02d}-*/shard-*.done.json"))
            if json.loads(p.read_text())["run_id"] != _last_run(catalog, out))
        assert finished > 0 and embedded + finished == clean_m[("icp_embed", "batches_computed")]
    else:
        assert embedded == 0  # every vector came from the killed run's shards
    assert clean_m[("resume", "tasks_reused")] == 0


def _last_run(catalog, out) -> str:
    con = duckdb.connect(str(catalog), read_only=True)
    rid = con.execute("SELECT run_id FROM runs WHERE output_path = ? ORDER BY started_at DESC LIMIT 1",
                      [str(out.resolve())]).fetchone()[0]
    con.close()
    return rid
