"""The catalog answers the common questions through `longforge catalog` (issue 2, point 7)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from catalog import Catalog
from tests.conftest import run_cli, write_jsonl, write_pipeline

PIPELINE = """
name: catalog-demo
inputs:
  - path: {input}
stages:
  - stage: normalize
  - stage: length_filter
    params: {{min_chars: 3000}}
  - stage: exact_dedup
"""


@pytest.fixture(scope="module")
def two_runs(real_docs, tmp_path_factory):
    d = tmp_path_factory.mktemp("cat")
    docs = [{"id": r["id"], "text": r["text"]} for r in real_docs if r["source"] in ("paul_graham", "python_docs")]
    docs += [{"id": "zz-copy", "text": docs[0]["text"]}, {"id": "zz-empty", "text": ""}]
    src = write_jsonl(d / "docs.jsonl", docs)
    pipeline = write_pipeline(d / "p.yaml", PIPELINE.format(input=src))
    catalog = d / "c.duckdb"
    for out in ("a", "b"):
        r = run_cli("run", str(pipeline), "--output", str(d / out), "--catalog", str(catalog), "--quiet")
        assert r.returncode == 0, r.stderr
    return d, catalog, docs


def _csv(result):
    assert result.returncode == 0, result.stderr
    return list(csv.DictReader(io.StringIO(result.stdout)))


def test_which_runs_produced_this_artifact(two_runs):
    d, catalog, _ = two_runs
    fp = Catalog(str(catalog)).query("SELECT fingerprint FROM artifacts WHERE kind = 'output' LIMIT 1")[1][0][0]
    rows = _csv(run_cli("catalog", "--catalog", str(catalog), "query",
                        f"SELECT run_id, pipeline, path FROM artifact_producers WHERE fingerprint = '{fp}'",
                        "--format", "csv"))
    # Same input, spec and seed in two folders: both runs produced the same content.
    assert len(rows) == 2 and {r["pipeline"] for r in rows} == {"catalog-demo"}
    assert {r["path"].rsplit("/", 1)[1] for r in rows} == {"a", "b"}


def test_how_many_records_each_stage_dropped_and_why(two_runs):
    d, catalog, docs = two_runs
    run_id = Catalog(str(catalog)).query("SELECT run_id FROM runs ORDER BY started_at LIMIT 1")[1][0][0]
    result = run_cli("catalog", "--catalog", str(catalog), "query",
                     f"SELECT stage, kind, reason, n FROM drops_by_reason WHERE run_id = '{run_id}' ORDER BY stage",
                     "--format", "json")
    rows = json.loads(result.stdout)
    by = {(r["stage"], r["reason"]): r["n"] for r in rows}
    short = sum(1 for x in docs if 0 < len(x["text"].strip()) < 3000)
    assert by[("read", "empty text")] == 1
    assert by[("length_filter", "shorter than 3000 characters")] == short
    assert by[("exact_dedup", "exact duplicate")] == 1
    # And the stage table says the same.
    stats = Catalog(str(catalog)).query(
        "SELECT stage, records_dropped + records_rejected FROM stage_stats WHERE run_id = ?", [run_id])[1]
    removed = dict(stats)
    assert removed["length_filter"] == short and removed["exact_dedup"] == 1 and removed["read"] == 1


def test_runs_artifacts_show_and_bad_sql(two_runs):
    d, catalog, _ = two_runs
    runs = run_cli("catalog", "--catalog", str(catalog), "runs")
    assert runs.returncode == 0 and runs.stdout.count("catalog-demo") == 2 and "succeeded" in runs.stdout
    arts = run_cli("catalog", "--catalog", str(catalog), "artifacts", "--format", "json")
    kinds = sorted(a["kind"] for a in json.loads(arts.stdout))
    assert kinds == ["input", "input", "output", "output"]
    run_id = json.loads(arts.stdout)[0]["run_id"]
    show = run_cli("catalog", "--catalog", str(catalog), "show", run_id)
    assert show.returncode == 0 and "exact_dedup" in show.stdout and "shorter than" in show.stdout
    bad = run_cli("catalog", "--catalog", str(catalog), "query", "SELECT nope FROM runs")
    assert bad.returncode == 2 and "query failed" in bad.stderr
    missing = run_cli("catalog", "--catalog", str(d / "none.duckdb"), "runs")
    assert missing.returncode == 2 and "no catalog" in missing.stderr


def test_lineage_links_a_pipeline_to_the_output_it_reads(two_runs, tmp_path):
    d, catalog, _ = two_runs
    second = write_pipeline(tmp_path / "q.yaml", f"""
        name: downstream
        inputs:
          - path: {d / 'a'}
        stages:
          - stage: normalize
        """)
    r = run_cli("run", str(second), "--output", str(tmp_path / "out"), "--catalog", str(catalog), "--quiet")
    assert r.returncode == 0, r.stderr
    rows = Catalog(str(catalog)).query(
        "SELECT p.name, c.name FROM lineage l JOIN artifacts p ON p.artifact_id = l.parent_artifact_id "
        "JOIN artifacts c ON c.artifact_id = l.child_artifact_id WHERE c.name = 'downstream'")[1]
    assert rows == [("catalog-demo", "downstream")]


def test_scores_side_table_accepts_scores(tmp_path):
    import pyarrow as pa

    cat = Catalog(str(tmp_path / "s.duckdb"))
    t = pa.table({"sample_id": ["a", "b"], "artifact_id": ["x", "x"], "job": ["ppl", "ppl"],
                  "model": ["smollm2", "smollm2"], "metric": ["perplexity"] * 2, "value": [3.5, 7.0],
                  "run_id": ["r", "r"]})
    assert cat.add_scores(t) == 2
    assert cat.query("SELECT sample_id FROM scores WHERE value > 5")[1] == [("b",)]


def test_score_rows_are_built_one_way(tmp_path):
    """The one builder of the scores table's rows (issue 34): per-row columns joined with what every
    row shares, in the table's columns; a column the table lacks is an error, not a silent drop."""
    from catalog.scores import score_rows

    t = score_rows({"sample_id": ["a", "b"], "metric": ["ppl", "ppl"], "value": [1, 2.5]}, run_id="r", job="eval")
    assert t.column_names == ["sample_id", "job", "metric", "value", "run_id"]
    assert t.column("value").to_pylist() == [1.0, 2.5] and t.column("run_id").to_pylist() == ["r", "r"]
    with pytest.raises(ValueError, match="no column"):
        score_rows({"sample_id": ["a"], "metric": ["m"], "value": [1.0]}, run="r")
    cat = Catalog(str(tmp_path / "c.duckdb"))
    assert cat.add_score_rows(t) == 2
    assert cat.query("SELECT sample_id, value, run_id FROM scores ORDER BY sample_id")[1] == [("a", 1.0, "r"),
                                                                                            ("b", 2.5, "r")]


def test_a_version_1_catalog_gets_the_rules_answer_for_its_old_rows(tmp_path):
    """Schema version 2 stores the accounting rule's answer. A catalog an older longforge wrote
    (no such column) gets it filled in, from each row's shape, when it is next written; the view
    reads the stored answer and never a copy of the rule."""
    import duckdb

    path = tmp_path / "c.duckdb"
    cat = Catalog(str(path))
    cat.start_run("r0", pipeline="p", pipeline_file="", runner="local", workers=1, spec_fingerprint="", seed=0,
                  params={}, code_version="", output_path=str(tmp_path))
    con = duckdb.connect(str(path))
    con.execute("DROP VIEW stage_accounting")
    con.execute("ALTER TABLE stage_stats DROP COLUMN reconciles")
    con.execute("UPDATE catalog_meta SET value = '1' WHERE key = 'schema_version'")
    rows = [("bestanswer_plan", "global-expanding", 4, 9, 0, 0, 4), ("normalize", "per-record", 5, 4, 1, 0, 4),
            ("broken", "per-record", 5, 3, 1, 0, 3)]
    for stage, shape, n_in, n_out, rej, drop, with_out in rows:
        con.execute("INSERT INTO stage_stats VALUES ('r0', 0, ?, ?, ?, ?, ?, ?, ?, 0.1)",
                    [stage, shape, n_in, n_out, rej, drop, with_out])
    con.close()
    cat.finish_run("r0", "succeeded")  # a write: the catalog moves to version 2
    got = dict(cat.query("SELECT stage, reconciles FROM stage_accounting")[1])
    assert got == {"bestanswer_plan": True, "normalize": True, "broken": False}
    assert cat.query("SELECT value FROM catalog_meta WHERE key = 'schema_version'")[1] == [("2",)]
