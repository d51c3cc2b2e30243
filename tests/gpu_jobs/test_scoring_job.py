"""The scoring job (gpu_jobs/scoring_job.py) as `longforge score` runs it: resumed after a kill
without duplicates, joined to an artifact's records, scoring changed texts again, rejecting what
cannot be scored, refusing bad settings before any work."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest

from catalog import Catalog
from gpu_jobs.lm import load_causal_lm
from tests.conftest import LONGFORGE, REPO, run_cli, write_jsonl
from tests.gpu_jobs.test_scoring import _direct_ppl


def _score_args(inp, catalog, out, *extra):
    return [*LONGFORGE, "score", "perplexity", "--input", str(inp), "--model", "smollm2-135m", "--catalog",
            str(catalog), "--output", str(out), "--part-size", "2", "--max-tokens", "256", "--quiet", *extra]


def test_killed_job_resumes_without_duplicates_and_with_the_same_values(paragraphs, tmp_path):
    inp = write_jsonl(tmp_path / "paras.jsonl", paragraphs[:16])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    clean = subprocess.run(_score_args(inp, tmp_path / "clean.duckdb", tmp_path / "clean"), env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-2000:]
    killed_out = tmp_path / "killed"
    proc = subprocess.Popen(_score_args(inp, tmp_path / "k.duckdb", killed_out), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(killed_out.glob("part-*.parquet"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    q = "SELECT count(DISTINCT sample_id) FROM scores"
    partial = Catalog(str(tmp_path / "k.duckdb")).query(q)[1][0][0]
    assert 0 < partial < 16  # it really died mid-run
    again = subprocess.run(_score_args(inp, tmp_path / "k.duckdb", killed_out), env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{partial} already in the catalog" in again.stdout
    rows = "SELECT sample_id, metric, value FROM scores ORDER BY 1, 2"
    resumed = Catalog(str(tmp_path / "k.duckdb")).query(rows)[1]
    assert resumed == Catalog(str(tmp_path / "clean.duckdb")).query(rows)[1]  # same values, each once
    assert len(resumed) == len({(s, m) for s, m, _ in resumed}) == 16 * 4
    side = pq.read_table(str(killed_out)).to_pylist()
    assert sorted((r["sample_id"], r["metric"]) for r in side) == [(s, m) for s, m, _ in resumed]


def test_scores_join_an_artifacts_records_by_id(paragraphs, tmp_path):
    inp = write_jsonl(tmp_path / "paras.jsonl", paragraphs[:6])
    catalog = tmp_path / "c.duckdb"
    r = run_cli("run", str(REPO / "pipelines" / "documents.yaml"), "--input", str(inp), "--output",
                str(tmp_path / "docs"), "--catalog", str(catalog), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("score", "perplexity", "--artifact", "documents", "--model", "smollm2-135m", "--catalog",
                str(catalog), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    artifact_id, path = Catalog(str(catalog)).find_artifact("documents")
    sql = (f"SELECT d.id, d.text, s.value FROM read_parquet('{path}/data/*.parquet') d "
           f"JOIN scores s ON s.sample_id = d.id WHERE s.artifact_id = '{artifact_id}' AND s.metric = 'ppl' "
           "ORDER BY d.id")
    r = run_cli("catalog", "query", sql, "--catalog", str(catalog), "--format", "json")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)
    assert len(rows) == 6 and all(row["value"] > 1 for row in rows)
    # a model that is not there fails clearly
    r = run_cli("score", "perplexity", "--artifact", "documents", "--model", "/nonexistent/model", "--catalog",
                str(catalog))
    assert r.returncode == 2 and "does not exist" in r.stderr


def _score(inp, catalog, out, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(_score_args(inp, catalog, out, *extra), env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_a_changed_text_is_scored_again_not_given_its_old_score(paragraphs, tmp_path):
    """Issue 11, point 4: scores are reused by (id, content), never by id alone."""
    records = paragraphs[:4]
    inp = write_jsonl(tmp_path / "a.jsonl", records)
    catalog, out = tmp_path / "c.duckdb", tmp_path / "scores"
    assert _score(inp, catalog, out).returncode == 0
    changed = [dict(r) for r in records]
    changed[1]["text"] = paragraphs[10]["text"]  # same id, another paragraph
    write_jsonl(inp, changed)
    again = _score(inp, catalog, out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 samples scored, 3 already in the catalog" in again.stdout
    rows = Catalog(str(catalog)).query(
        "SELECT sample_id, content_hash, value FROM scores WHERE metric = 'ppl' ORDER BY run_id")[1]
    for_changed = [(h, v) for s, h, v in rows if s == changed[1]["id"]]
    assert len(for_changed) == 2 and for_changed[0][0] != for_changed[1][0]
    smollm2 = load_causal_lm("smollm2-135m", device="cpu")
    assert for_changed[1][1] == pytest.approx(_direct_ppl(smollm2, changed[1]["text"]), rel=1e-3)
    # The side table keeps both: new content never overwrote the old part.
    side = pq.read_table(str(out)).to_pylist()
    assert sum(1 for r in side if r["sample_id"] == changed[1]["id"] and r["metric"] == "ppl") == 2


def test_unscorable_records_are_rejected_with_a_reason_and_never_scored_nan(paragraphs, tmp_path):
    """Issue 11, point 11: null, empty and non-text fields go to the catalog's rejects; no NaN anywhere."""
    records = [dict(r) for r in paragraphs[:3]] + [
        {"id": "null-text", "text": None}, {"id": "empty-text", "text": "  \n "}, {"id": "one-word", "text": "Hi"}]
    inp = write_jsonl(tmp_path / "a.jsonl", records)
    catalog = tmp_path / "c.duckdb"
    r = _score(inp, catalog, tmp_path / "scores")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 rejected" in r.stdout
    cat = Catalog(str(catalog))
    rejects = cat.query("SELECT record_id, reason, stage FROM rejects ORDER BY 1")[1]
    assert rejects == [("empty-text", "empty text", "score:perplexity"), ("null-text", "missing field",
                                                                          "score:perplexity")]
    values = cat.query("SELECT sample_id, metric, value FROM scores")[1]
    assert not any(math.isnan(v) for _, _, v in values)
    assert {s for s, _, _ in values} == {p["id"] for p in paragraphs[:3]} | {"one-word"}
    stats = cat.query("SELECT records_in, records_out, records_rejected FROM stage_stats")[1]
    assert stats == [(6, 4, 2)]


@pytest.mark.parametrize("extra, message", [
    (["--stride", "-4"], "--stride: must be at least 1"),
    (["--max-tokens", "0"], "--max-tokens: must be at least 1"),
    (["--max-tokens", "-5"], "--max-tokens: must be at least 1"),
    (["--stride", "300"], "the stride (300) is not smaller than the window (256)"),
    (["--stride", "256"], "the stride (256) is not smaller than the window (256)"),  # window starts unscored
])
def test_bad_windows_and_strides_are_refused_before_any_work(paragraphs, tmp_path, extra, message):
    inp = write_jsonl(tmp_path / "a.jsonl", paragraphs[:2])
    r = _score(inp, tmp_path / "c.duckdb", tmp_path / "scores", *extra)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "scores").exists()


def test_a_stride_over_the_models_window_is_refused(paragraphs, tmp_path):
    inp = write_jsonl(tmp_path / "a.jsonl", paragraphs[:2])
    args = [a for a in _score_args(inp, tmp_path / "c.duckdb", tmp_path / "s") if a not in ("--max-tokens", "256")]
    r = subprocess.run([*args, "--stride", "100000"], env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "not smaller than the window (8192 tokens)" in r.stderr


def test_empty_and_damaged_inputs_say_so(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    r = _score(tmp_path / "empty.jsonl", tmp_path / "c.duckdb", tmp_path / "s")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "empty.jsonl" in r.stderr
    (tmp_path / "cut.parquet").write_bytes(b"PAR1\x00\x01")
    r = _score(tmp_path / "cut.parquet", tmp_path / "c.duckdb", tmp_path / "s")
    assert r.returncode == 2 and "cut.parquet' cannot be read" in r.stderr and "Traceback" not in r.stderr


def test_a_terminated_scoring_job_is_recorded_interrupted(paragraphs, tmp_path):
    inp = write_jsonl(tmp_path / "paras.jsonl", paragraphs[:16])
    out = tmp_path / "scores"
    proc = subprocess.Popen(_score_args(inp, tmp_path / "c.duckdb", out), env={**os.environ, "PYTHONPATH": str(REPO)},
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("part-*.parquet")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert Catalog(str(tmp_path / "c.duckdb")).query("SELECT status FROM runs")[1] == [("interrupted",)]
