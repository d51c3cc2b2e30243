"""``longforge push`` against a local stand-in for the Hub (issue 18, must show): what the server
received loads with ``datasets``; the card holds the catalog's figures; a push killed midway
resumes without sending finished files again; the token is nowhere in logs, catalog or card.

The artifact is a Dataset Decomposition run over real Python documentation (with the corpus's
licence column, as ``longforge corpus build`` writes it); the Hub is tests/fixtures/hub_server.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import datasets
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import LONGFORGE, REPO, run_cli
from tests.fixtures.hub_server import HubServer

TOKEN = "hf_fixtureSecretToken0123456789"


@pytest.fixture(scope="module")
def built(real_docs, tmp_path_factory):
    base = tmp_path_factory.mktemp("push")
    rows = [{"id": r["id"], "text": r["text"], "license": r["license"]}
            for r in sorted(real_docs, key=lambda r: r["id"]) if r["source"] == "python_docs"][:60]
    pq.write_table(pa.Table.from_pylist(rows), base / "docs.parquet")
    pipe = base / "decomposition.yaml"
    pipe.write_text((REPO / "pipelines" / "decomposition.yaml").read_text())
    catalog = base / "c.duckdb"
    r = run_cli("run", str(pipe), "--input", str(base / "docs.parquet"), "--output", str(base / "out"),
                "--catalog", str(catalog), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    return {"catalog": catalog, "out": base / "out", "license": rows[0]["license"]}


def _env(hub, tmp_path, token=TOKEN, **extra):
    return {"HF_ENDPOINT": hub.url, "HF_TOKEN": token, "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_VERBOSITY": "debug", "HF_HUB_DISABLE_TELEMETRY": "1", **extra}


def _push(built, hub, tmp_path, *args, **env):
    return run_cli("push", "latest", "--repo", "lab/decomposition-demo", "--catalog", str(built["catalog"]), *args,
                   env=_env(hub, tmp_path, **env))


def _catalog_text(catalog) -> str:
    con = duckdb.connect(str(catalog), read_only=True)
    tables = [t for (t,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
    text = "".join(str(con.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables)
    con.close()
    return text


def test_push_loads_with_datasets_and_the_card_holds_the_catalog(built, tmp_path):
    # (datasets caches a local repo's configs by folder name, not content: each test loads into a
    # cache of its own, or an earlier test's rows could be read back)
    with HubServer(tmp_path / "hub", TOKEN) as hub:
        r = _push(built, hub, tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        repo = hub.state.files("lab/decomposition-demo", "main")
        commits = list(hub.state.commits)
    con = duckdb.connect(str(built["catalog"]), read_only=True)
    run_id, n, fp = con.execute("SELECT run_id, n_records, fingerprint FROM artifacts WHERE kind = 'output' AND "
                                "name = 'decomposition'").fetchone()
    stats = con.execute("SELECT step, stage, shape, records_in, records_out, records_rejected, records_dropped "
                        "FROM stage_stats WHERE run_id = ? ORDER BY step, rowid", [run_id]).fetchall()
    sides = con.execute("SELECT name, n_records FROM artifacts WHERE run_id = ? AND kind = 'output' AND name <> "
                        "'decomposition'", [run_id]).fetchall()
    pushes = con.execute("SELECT repo, revision, commit_oid, configs FROM pushes WHERE commit_oid = ?",
                         [commits[-1]["oid"]]).fetchall()
    con.close()

    ds = datasets.load_dataset(str(repo), "decomposition", split="train", cache_dir=tmp_path / "hf-cache")
    assert len(ds) == n
    assert ds.column_names[:3] == ["id", "doc_id", "bucket"]
    for name, n_side in sides:  # every side table is a config of its own
        side = datasets.load_dataset(str(repo), f"decomposition-{name.split(':')[1]}", split="train",
                                     cache_dir=tmp_path / "hf-cache")
        assert len(side) == n_side

    card = (repo / "README.md").read_text()
    assert f"| decomposition | {n:,} |" in card and f"`{fp[:16]}`" in card
    for step, stage, shape, n_in, n_out, rej, drop in stats:
        assert f"| {step} | {stage} | {shape} | {n_in:,} | {n_out:,} | {rej:,} | {drop:,} |" in card
    assert built["license"] in card, "the source's licence, followed through the lineage"
    assert "tokenizer: smollm2" in card, "the pipeline as run"
    assert pushes == [("lab/decomposition-demo", "main", commits[-1]["oid"], json.dumps(
        ["decomposition"] + [f"decomposition-{name.split(':')[1]}" for name, _ in sorted(sides)]))]
    for where in (r.stdout, r.stderr, card, _catalog_text(built["catalog"])):
        assert TOKEN not in where


def test_push_killed_midway_resumes_without_sending_finished_files(built, tmp_path):
    with HubServer(tmp_path / "hub", TOKEN) as hub:
        hub.state.hold_commit = 2  # the first config is committed; the client dies during the second
        env = {**os.environ, **_env(hub, tmp_path), "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([*LONGFORGE, "push", "latest", "--repo", "lab/decomposition-demo", "--catalog",
                                 str(built["catalog"])], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        assert hub.state.held.wait(120), "the push never reached its second commit"
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        hub.state.release.set()
        first = [p for c in hub.state.commits for p in c["paths"]]
        assert first and all(p.startswith("decomposition/") for p in first)
        n_before = len(hub.state.commits)

        r = _push(built, hub, tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        again = [p for c in hub.state.commits[n_before:] for p in c["paths"]]
        repo = hub.state.files("lab/decomposition-demo", "main")
    assert not set(first) & set(again), "files committed before the kill were sent again"
    assert "README.md" in again and any(p.startswith("decomposition-") for p in again)
    ds = datasets.load_dataset(str(repo), "decomposition", split="train", cache_dir=tmp_path / "hf-cache")
    assert len(ds) == sum(pq.read_metadata(p).num_rows for p in (built["out"] / "data").glob("*.parquet"))
    for where in (out.decode(), err.decode(), r.stdout, r.stderr):
        assert TOKEN not in where


def _n_pushes(catalog) -> int:
    con = duckdb.connect(str(catalog), read_only=True)
    n = con.execute("SELECT count(*) FROM pushes").fetchone()[0]
    con.close()
    return n


def test_push_says_why_when_refused_offline_or_without_a_token(built, tmp_path):
    before = _n_pushes(built["catalog"])
    with HubServer(tmp_path / "hub", TOKEN) as hub:
        wrong = "hf_notTheRightToken987654321"
        refused = _push(built, hub, tmp_path, token=wrong)
        offline = _push(built, hub, tmp_path, HF_HUB_OFFLINE="1")
        no_token = _push(built, hub, tmp_path, token="")
        assert not hub.state.commits
    assert refused.returncode == 1 and "refused the token" in refused.stderr
    assert wrong not in refused.stderr + refused.stdout
    assert offline.returncode == 1 and "HF_HUB_OFFLINE" in offline.stderr
    assert no_token.returncode == 1 and "HF_TOKEN" in no_token.stderr
    assert _n_pushes(built["catalog"]) == before, "a failed push records nothing"


def _run_documents(base, name: str, rows: list, per_file: int, *extra: str):
    """A plain documents pipeline (normalize) into base/out, ``per_file`` records per Parquet file."""
    pq.write_table(pa.Table.from_pylist(rows), base / f"{name}.parquet")
    pipe = base / "docs.yaml"
    pipe.write_text(f"name: docs\noutput:\n  records_per_file: {per_file}\nstages:\n  - stage: normalize\n")
    r = run_cli("run", str(pipe), "--input", str(base / f"{name}.parquet"), "--output", str(base / "out"),
                "--catalog", str(base / "c.duckdb"), "--quiet", *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    con = duckdb.connect(str(base / "c.duckdb"), read_only=True)
    art = con.execute("SELECT artifact_id FROM artifacts WHERE kind = 'output' ORDER BY created_at DESC LIMIT 1"
                      ).fetchone()[0]
    con.close()
    return art


def test_a_push_replaces_what_an_earlier_push_left_in_its_config(real_docs, tmp_path):
    """Issue 32, point 2: run A (5 files) then run B (1 file) pushed to one config give B's records."""
    docs = [{"id": r["id"], "text": r["text"]} for r in sorted(real_docs, key=lambda r: r["id"])][:250]
    a_base, b_base = tmp_path / "a", tmp_path / "b"
    a_base.mkdir()
    b_base.mkdir()
    art_a = _run_documents(a_base, "a", docs, 50)
    art_b = _run_documents(b_base, "b", docs[:200], 20000)
    with HubServer(tmp_path / "hub", TOKEN) as hub:
        for base, art in ((a_base, art_a), (b_base, art_b)):
            r = run_cli("push", art, "--repo", "lab/replaced", "--config", "docs", "--catalog", str(base / "c.duckdb"),
                        env=_env(hub, tmp_path))
            assert r.returncode == 0, r.stderr[-3000:]
        repo = hub.state.files("lab/replaced", "main")
    assert len(list((repo / "docs").glob("*.parquet"))) == 1
    ds = datasets.load_dataset(str(repo), "docs", split="train", cache_dir=tmp_path / "hf-cache")
    assert len(ds) == 200 and "| docs | 200 |" in (repo / "README.md").read_text()


def test_a_push_refuses_a_folder_another_run_rebuilt(real_docs, tmp_path):
    """Issue 32, point 3: run A, then run B over the same folder with --overwrite; pushing A sends nothing."""
    docs = [{"id": r["id"], "text": r["text"]} for r in sorted(real_docs, key=lambda r: r["id"])][:250]
    art_a = _run_documents(tmp_path, "a", docs[:50], 20000)
    _run_documents(tmp_path, "b", docs[50:250], 20000, "--overwrite")
    with HubServer(tmp_path / "hub", TOKEN) as hub:
        r = run_cli("push", art_a, "--repo", "lab/stale", "--catalog", str(tmp_path / "c.duckdb"),
                    env=_env(hub, tmp_path))
        assert not hub.state.commits
    assert r.returncode == 1 and "no longer holds the records of run" in r.stderr, r.stderr[-2000:]
    assert "200 records" in r.stderr and "the catalog says 50" in r.stderr


def test_push_to_an_unreachable_hub_or_into_the_cards_name_says_why(built, tmp_path):
    """Issue 32, point 14: the Hub down (httpx's ConnectError) and --config README.md."""
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    down = run_cli("push", "latest", "--repo", "lab/x", "--catalog", str(built["catalog"]), env=env, timeout=300)
    assert down.returncode == 1 and "cannot reach the Hub" in down.stderr, down.stderr[-2000:]
    readme = run_cli("push", "latest", "--repo", "lab/x", "--config", "README.md", "--catalog", str(built["catalog"]),
                     env=env)
    assert readme.returncode == 1 and "may not be a file the repo keeps" in readme.stderr, readme.stderr[-2000:]
    for r in (down, readme):
        assert "Traceback" not in r.stderr and TOKEN not in r.stderr + r.stdout
