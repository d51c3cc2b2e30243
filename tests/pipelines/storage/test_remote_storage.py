"""Input and output on remote stores (issue 18, must show): a product pipeline (Dataset
Decomposition over real Python documentation) reads from and writes to ``memory://`` and to a
local S3-compatible server (moto's, started by the test, standing in for S3 / GCS), is SIGKILLed
mid-run and resumed on a *fresh* staging folder (another machine, as far as the run can tell), and
gives the fingerprint of the same run on local paths."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, run_cli, write_jsonl

EDITS = "\nread:\n  shard_mb: 0.01\n"  # several shards, so the kill lands between finished and unfinished work


@pytest.fixture(scope="module")
def product(real_docs, tmp_path_factory):
    """The decomposition pipeline, its JSONL input, and its output fingerprint on local paths."""
    base = tmp_path_factory.mktemp("remote")
    rows = [{"id": r["id"], "text": r["text"]} for r in sorted(real_docs, key=lambda r: r["id"])
            if r["source"] == "python_docs"][:60]
    inp = write_jsonl(base / "docs.jsonl", rows)
    pipe = base / "decomposition.yaml"
    pipe.write_text((REPO / "pipelines" / "decomposition.yaml").read_text() + EDITS)
    out = base / "local"
    r = run_cli("run", str(pipe), "--input", str(inp), "--output", str(out), "--catalog", str(base / "c.duckdb"),
                "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((out / ".longforge" / "run.json").read_text())
    data = {p.name: p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))}
    return {"pipe": pipe, "input": inp, "fingerprint": record["fingerprint"], "data": data, "base": base}


def test_memory_store_in_and_out_matches_local_paths(product, tmp_path, monkeypatch):
    """In-process (a ``memory://`` store lives in its process): the same records, byte for byte."""
    import fsspec

    from pipelines.commands.main import main

    fs = fsspec.filesystem("memory")
    fs.put_file(str(product["input"]), "/lf-test-in/docs.jsonl")
    monkeypatch.setenv("LONGFORGE_STAGING", str(tmp_path / "staging"))
    rc = main(["run", str(product["pipe"]), "--input", "memory://lf-test-in/docs.jsonl", "--output",
               "memory://lf-test-out/dec", "--catalog", str(tmp_path / "c.duckdb"), "--quiet"])
    assert rc == 0
    record = json.loads(fs.cat_file("/lf-test-out/dec/.longforge/run.json"))
    assert record["fingerprint"] == product["fingerprint"]
    remote = {p.rsplit("/", 1)[1]: fs.cat_file(p) for p in fs.glob("/lf-test-out/dec/data/*.parquet")}
    assert remote == product["data"]
    assert not fs.exists("/lf-test-out/dec/.longforge/lock.json"), "the lock object is released"
    con = duckdb.connect(str(tmp_path / "c.duckdb"), read_only=True)
    paths = con.execute("SELECT path FROM artifacts WHERE kind = 'output' ORDER BY path").fetchall()
    assert ("memory://lf-test-out/dec",) in paths, "the catalog names the remote folder, not the staging copy"
    fs.rm("/lf-test-out", recursive=True)
    fs.rm("/lf-test-in", recursive=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on a local port; every process the test starts reaches it by the endpoint
    variables fsspec and botocore read."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "FSSPEC_S3_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL": endpoint}
    yield env
    server.stop()


def _s3(env):
    import s3fs

    return s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                             endpoint_url=env["FSSPEC_S3_ENDPOINT_URL"], skip_instance_cache=True)


def test_s3_run_killed_then_resumed_on_a_fresh_machine(product, s3_server, tmp_path):
    """The run is SIGKILLed after a task of its group step; the step finished before it is on
    S3. A rerun with an empty staging folder fetches them, runs only the rest and gives the local
    fingerprint; the finished output on S3 reads back with ``datasets``."""
    s3 = _s3(s3_server)
    s3.mkdir("lf-bucket")
    s3.put_file(str(product["input"]), "lf-bucket/in/docs.jsonl")
    catalog = tmp_path / "c.duckdb"
    args = ["run", str(product["pipe"]), "--input", "s3://lf-bucket/in/docs.jsonl", "--output",
            "s3://lf-bucket/out/dec", "--catalog", str(catalog), "--quiet"]
    killed = run_cli(*args, env={**s3_server, "LONGFORGE_STAGING": str(tmp_path / "machine-a"),
                                 "LONGFORGE_KILL_AT": "group:1:1"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    s3.invalidate_cache()
    pushed = s3.find("lf-bucket/out/dec")
    markers = [p for p in pushed if p.endswith(".done.json")]
    assert markers and not any("/data/" in p for p in pushed), "finished steps are on S3, no published file yet"
    assert all("/step-00-" in p for p in markers), "the unfinished step left no marker on S3"

    resumed = run_cli(*args, env={**s3_server, "LONGFORGE_STAGING": str(tmp_path / "machine-b")})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    s3.invalidate_cache()
    record = json.loads(s3.cat_file("lf-bucket/out/dec/.longforge/run.json"))
    assert record["fingerprint"] == product["fingerprint"]
    con = duckdb.connect(str(catalog), read_only=True)
    reused = con.execute("SELECT m.value FROM metrics m JOIN runs r USING (run_id) WHERE r.status = 'succeeded' "
                         "AND m.stage = 'resume' AND m.name = 'tasks_reused'").fetchone()[0]
    con.close()
    assert reused == len(markers), "every task finished before the kill was taken from S3, none redone"

    report = run_cli("report", "latest", "--output", str(tmp_path / "r.html"), "--catalog", str(catalog),
                     env={"LONGFORGE_STAGING": str(tmp_path / "machine-b")})
    assert report.returncode == 0, report.stderr
    assert "Output lengths" in (tmp_path / "r.html").read_text(), "the report reads the staged copy"

    import datasets

    files = sorted(s3.glob("lf-bucket/out/dec/data/*.parquet"))
    local = tmp_path / "fetched"
    local.mkdir()
    for f in files:
        s3.get_file(f, str(local / f.rsplit("/", 1)[1]))
    ds = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in local.iterdir()), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert len(ds) == record["records"] == sum(pq.read_metadata(p).num_rows for p in local.iterdir())


def test_s3_beam_workers_fetch_and_push_their_own_files(product, s3_server, tmp_path):
    """As on a cluster, whose machines share no disk: each Beam worker process fetches what its
    tasks read from S3 into a folder of its own and pushes what they wrote; the launching machine
    never fetches the records between steps, and the output matches the local run's."""
    s3 = _s3(s3_server)
    if not s3.exists("lf-bucket"):
        s3.mkdir("lf-bucket")
    s3.put_file(str(product["input"]), "lf-bucket/in2/docs.jsonl")
    staging, workers = tmp_path / "driver", tmp_path / "workers"
    workers.mkdir()
    r = run_cli("run", str(product["pipe"]), "--input", "s3://lf-bucket/in2/docs.jsonl", "--output",
                "s3://lf-bucket/out2/dec", "--catalog", str(tmp_path / "c.duckdb"), "--quiet", "--runner", "beam",
                "--workers", "2", env={**s3_server, "LONGFORGE_STAGING": str(staging), "TMPDIR": str(workers),
                                       "LONGFORGE_WORKER_SYNC": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    s3.invalidate_cache()
    record = json.loads(s3.cat_file("lf-bucket/out2/dec/.longforge/run.json"))
    assert record["fingerprint"] == product["fingerprint"]
    assert not list(staging.rglob("records-*.parquet")), "the launching machine fetched records between steps"
    worker_dirs = list((workers / "longforge-worker").iterdir())
    assert worker_dirs, "no worker staged anything"
    assert sum(len(list(d.rglob("records-*.parquet"))) for d in worker_dirs) > 0, "the workers ran the tasks"
    assert not s3.exists("lf-bucket/out2/dec/.longforge/lock.json")


@pytest.mark.slow
def test_s3_ray_workers_fetch_and_push_their_own_files(product, s3_server, tmp_path):
    """The Ray runner on a cluster started for the run: each Ray worker fetches what its task
    reads from S3 and pushes what it wrote, the output files are written by Ray tasks, and the
    launching machine never holds the records between steps; the local run's fingerprint."""
    import shutil
    import tempfile

    s3 = _s3(s3_server)
    if not s3.exists("lf-bucket"):
        s3.mkdir("lf-bucket")
    s3.put_file(str(product["input"]), "lf-bucket/in3/docs.jsonl")
    staging = tmp_path / "driver"
    workers = Path(tempfile.mkdtemp(prefix="lfw", dir="/tmp"))  # short: Ray's sockets live under TMPDIR too
    try:
        r = run_cli("run", str(product["pipe"]), "--input", "s3://lf-bucket/in3/docs.jsonl", "--output",
                    "s3://lf-bucket/out3/dec", "--catalog", str(tmp_path / "c.duckdb"), "--quiet", "--runner", "ray",
                    "--workers", "2", env={**s3_server, "LONGFORGE_STAGING": str(staging), "TMPDIR": str(workers)})
        assert r.returncode == 0, r.stderr[-3000:]
        s3.invalidate_cache()
        record = json.loads(s3.cat_file("lf-bucket/out3/dec/.longforge/run.json"))
        assert record["fingerprint"] == product["fingerprint"]
        assert not list(staging.rglob("records-*.parquet")), "the launching machine fetched records between steps"
        worker_dirs = list((workers / "longforge-worker").iterdir())
        assert sum(len(list(d.rglob("records-*.parquet"))) for d in worker_dirs) > 0, "the workers ran the tasks"
        assert sum(len(list(d.rglob("data/train-*.parquet"))) for d in worker_dirs) > 0, "workers wrote the output"
    finally:
        shutil.rmtree(workers, ignore_errors=True)


def test_a_remote_output_inside_its_remote_input_is_refused(product, tmp_path, monkeypatch):
    """Issue 32, point 7: the local guards hold for URLs too (in-process: memory:// lives here)."""
    import fsspec

    from pipelines.commands.main import main

    fs = fsspec.filesystem("memory")
    fs.put_file(str(product["input"]), "/lf-guard/in/docs.jsonl")
    monkeypatch.setenv("LONGFORGE_STAGING", str(tmp_path / "staging"))
    try:
        for inp, out in (("memory://lf-guard/in/", "memory://lf-guard/in/sub"),
                         ("memory://lf-guard/in/**/*.jsonl", "memory://lf-guard/in/out"),
                         ("memory://lf-guard/in/docs.jsonl", "memory://lf-guard/in/docs.jsonl/out")):
            rc = main(["run", str(product["pipe"]), "--input", inp, "--output", out, "--catalog",
                       str(tmp_path / "c.duckdb"), "--quiet"])
            assert rc == 2, (inp, out)
            assert not fs.exists(out.split("://", 1)[1]), (inp, out)
    finally:
        fs.rm("/lf-guard", recursive=True)


def test_a_remote_glob_leaves_hidden_files_out_as_a_local_glob_does():
    import fsspec

    from pipelines import storage

    fs = fsspec.filesystem("memory")
    for path in ("/lf-glob/in/a.parquet", "/lf-glob/in/x/.longforge/work/b.parquet",
                 "/lf-glob/in/.hidden.parquet", "/lf-glob/in/x/.longforge/rejects.parquet", "/lf-glob/in/x/c.parquet"):
        fs.pipe_file(path, b"x")
    try:
        def tails(urls):  # memory:// URLs come back with the store's root slash
            return [u.split("lf-glob/", 1)[1] for u in urls]

        assert tails(storage.remote_glob("memory://lf-glob/in/**/*.parquet")) == ["in/a.parquet", "in/x/c.parquet"]
        named = storage.remote_glob("memory://lf-glob/in/x/.longforge/*.parquet")
        assert tails(named) == ["in/x/.longforge/rejects.parquet"]  # named in the pattern: read
    finally:
        fs.rm("/lf-glob", recursive=True)
