"""Every runner gives the same output for the same input, spec and seed (issue 2, must show)."""

from __future__ import annotations

import json

import duckdb
import pytest

from tests.conftest import REPO, run_cli, write_jsonl

RUNNERS = [
    ("local", []),
    ("local", ["--workers", "2"]),
    ("beam", ["--workers", "1"]),
    ("beam", ["--workers", "2"]),
    ("datatrove", ["--workers", "2"]),
]


@pytest.fixture(scope="module")
def inputs_with_duplicates(real_docs, tmp_path_factory):
    """Real documents plus exact copies and one-word edits of some of them, over three files."""
    d = tmp_path_factory.mktemp("dup-input")
    docs = [{"id": r["id"], "text": r["text"], "source": r["source"]} for r in real_docs[::4]]
    long_docs = [r for r in docs if len(r["text"]) > 4000]
    extra = []
    for k, r in enumerate(long_docs[:10]):
        extra.append({"id": f"zz-exact-{k}", "text": r["text"], "source": "copies"})
    for k, r in enumerate(long_docs[10:15]):
        words = r["text"].split(" ")
        words[len(words) // 2] = "EDITED"
        extra.append({"id": f"zz-near-{k}", "text": " ".join(words), "source": "copies"})
    all_docs = docs + extra
    third = len(all_docs) // 3
    files = [write_jsonl(d / f"part{i}.jsonl", all_docs[i * third:(i + 1) * third if i < 2 else None])
             for i in range(3)]
    return files, len(all_docs)


@pytest.fixture(scope="module")
def runs(inputs_with_duplicates, tmp_path_factory):
    files, _ = inputs_with_duplicates
    base = tmp_path_factory.mktemp("runs")
    catalog = base / "catalog.duckdb"
    results = {}
    for runner, extra in RUNNERS:
        key = f"{runner}{''.join(extra)}"
        out = base / key
        args = ["run", str(REPO / "pipelines" / "documents.yaml"), "--output", str(out), "--catalog", str(catalog),
                "--runner", runner, "--quiet", *extra]
        for f in files:
            args += ["--input", str(f)]
        result = run_cli(*args)
        assert result.returncode == 0, f"{key}: {result.stderr[-3000:]}"
        results[key] = out
    return results, catalog


def test_all_runners_produce_identical_fingerprints_and_bytes(runs):
    results, catalog = runs
    con = duckdb.connect(str(catalog), read_only=True)
    rows = con.execute(
        "SELECT r.runner, r.workers, a.fingerprint, a.n_records FROM artifacts a JOIN runs r USING (run_id) "
        "WHERE a.kind = 'output' ORDER BY r.started_at"
    ).fetchall()
    assert len(rows) == len(RUNNERS)
    assert len({fp for _, _, fp, _ in rows}) == 1, rows
    files = {k: sorted((out / "data").glob("*.parquet")) for k, out in results.items()}
    reference = [f.read_bytes() for f in files["local"]]
    for k, fs in files.items():
        assert [f.read_bytes() for f in fs] == reference, k


def test_dedup_removed_the_planted_copies_on_every_runner(runs, inputs_with_duplicates):
    results, catalog = runs
    _, n_in = inputs_with_duplicates
    con = duckdb.connect(str(catalog), read_only=True)
    per_run = con.execute(
        "SELECT run_id, stage, records_in, records_out, records_dropped FROM stage_stats "
        "WHERE stage IN ('exact_dedup', 'minhash_dedup') ORDER BY run_id, step"
    ).fetchall()
    assert len(per_run) == 2 * len(RUNNERS)
    for _run, stage, rin, rout, dropped in per_run:
        if stage == "exact_dedup":
            assert dropped == 10
        else:
            assert dropped >= 5
        assert rin == rout + dropped
    # The kept copy is always the smallest id: every planted copy ("zz-...") is the one dropped.
    dropped_ids = {r[0] for r in con.execute(
        "SELECT record_id FROM rejects WHERE kind = 'dropped' AND stage LIKE '%dedup'").fetchall()}
    assert {f"zz-exact-{k}" for k in range(10)} <= dropped_ids
    assert {f"zz-near-{k}" for k in range(5)} <= dropped_ids


def test_stage_stats_reconcile_for_every_run(runs):
    _, catalog = runs
    con = duckdb.connect(str(catalog), read_only=True)
    assert con.execute("SELECT count(*) FROM stage_accounting WHERE NOT reconciles").fetchone()[0] == 0


def test_output_loads_with_datasets(runs):
    import datasets

    results, _ = runs
    ds = datasets.load_dataset(str(results["local"]), split="train")
    card = (results["local"] / "README.md").read_text()
    assert f"records: {len(ds):,}" in card
    assert {"id", "text", "n_tokens", "language", "sentences"} <= set(ds.column_names)
    assert all(n > 0 for n in ds["n_tokens"])
    run = json.loads((results["local"] / ".longforge" / "run.json").read_text())
    assert run["records"] == len(ds)


def test_many_output_files_are_the_same_bytes_on_every_runner(real_docs, tmp_path):
    """Publishing spills each shard by output file and assembles each file from its row groups, so
    that memory holds one shard and one file; the files are those the Beam runner writes."""
    from tests.conftest import write_pipeline

    docs = [{"id": r["id"], "text": r["text"]} for r in real_docs[::7]]
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    p = write_pipeline(tmp_path / "p.yaml", """
        name: many-files
        read: {shard_mb: 0.05}
        output: {records_per_file: 25}
        stages:
          - stage: normalize
          - stage: exact_dedup
        """)
    trees = {}
    for runner, extra in RUNNERS:
        out = tmp_path / f"{runner}{''.join(extra)}"
        r = run_cli("run", str(p), "--input", str(src), "--output", str(out), "--catalog", str(tmp_path / "c.duckdb"),
                    "--runner", runner, "--quiet", *extra)
        assert r.returncode == 0, r.stderr[-3000:]
        trees[out.name] = {f.name: f.read_bytes() for f in sorted((out / "data").glob("*.parquet"))}
    first = next(iter(trees.values()))
    assert len(first) >= 7
    assert all(t == first for t in trees.values())
    assert not list(tmp_path.glob("*/.longforge/work/*/publish"))  # the spill is cleaned up


def test_beam_runs_the_stages_in_worker_processes(runs):
    """Beam with two workers: every shard of every step was processed by a worker process, not by
    the driver; the local runner with one worker, for contrast, runs them in the driver."""
    results, catalog = runs
    con = duckdb.connect(str(catalog), read_only=True)

    def shard_pids(out):
        markers = (out / ".longforge" / "work").glob("step-*/shard-*.done.json")
        pids = {json.loads(m.read_text())["pid"] for m in markers}
        driver = con.execute("SELECT pid FROM runs WHERE output_path = ? ORDER BY started_at DESC LIMIT 1",
                             [str(out.resolve())]).fetchone()[0]
        return pids, driver

    pids, driver = shard_pids(results["beam--workers2"])
    assert pids and driver not in pids
    pids, driver = shard_pids(results["local"])
    assert pids == {driver}
