"""The Ray runner on a real Ray cluster of two nodes on this machine (``ray.cluster_utils.Cluster``,
one CPU each): the products give the local runner's bytes, and a worker killed in the middle of a
task (a model stage's batch, a group step's group) is retried by the cluster, the run finishing on
its own with the undisturbed fingerprints, no record lost or duplicated, and the retry in the catalog.

Inputs are real texts (the corpora of OFFLINE.md) cut into several shards, so both nodes get tasks.
"""

from __future__ import annotations

import hashlib
import json

import duckdb
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, run_cli, write_jsonl
from tests.pipelines.test_products_on_runners import PRODUCTS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_address():
    """A cluster of a head and one more node, as `ray start` would make on two machines."""
    from ray.cluster_utils import Cluster

    store = 80 * 1024 * 1024
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store,
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1, object_store_memory=store)
    cluster.wait_for_nodes()
    yield cluster.address
    cluster.shutdown()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return tmp_path_factory.mktemp("ray-catalog") / "c.duckdb"


def _pipeline(tmp_path, product: str, real_docs) -> tuple:
    make_input, edits = PRODUCTS[product]
    inp = write_jsonl(tmp_path / "input.jsonl", make_input(sorted(real_docs, key=lambda r: r["id"])))
    spec = (REPO / "pipelines" / f"{product}.yaml").read_text()
    for old, new in edits:
        spec = spec.replace(old, new)
    pipe = tmp_path / f"{product}.yaml"
    pipe.write_text(spec + "\nread:\n  shard_mb: 0.01\n")  # several shards: both nodes get tasks
    return pipe, inp


def _run(pipe, inp, out, catalog, *extra, env=None):
    r = run_cli("run", str(pipe), "--input", str(inp), "--output", str(out), "--catalog", str(catalog), "--quiet",
                *extra, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _prints(out) -> tuple:
    """The content fingerprint and a digest of every file beside the records (card aside)."""
    skip = {".longforge", "data", "README.md"}
    files = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
             if p.is_file() and p.relative_to(out).parts[0] not in skip}
    return json.loads((out / ".longforge" / "run.json").read_text())["fingerprint"], files


def _worker_pids(out) -> set[int]:
    return {json.loads(m.read_text())["pid"] for m in (out / ".longforge" / "work").glob("step-*/shard-*.done.json")}


@pytest.mark.parametrize("product", ["decomposition", "utk", "icp", "gateau-smollm2"])
def test_products_on_a_two_node_cluster_match_the_local_runner(product, real_docs, tmp_path, catalog, ray_address):
    pipe, inp = _pipeline(tmp_path, product, real_docs)
    _run(pipe, inp, tmp_path / "local", catalog)
    r = _run(pipe, inp, tmp_path / "ray", catalog, "--runner", "ray", "--ray-address", ray_address)
    assert _prints(tmp_path / "ray") == _prints(tmp_path / "local")
    assert "(ray," in r.stdout
    pids = _worker_pids(tmp_path / "ray")
    assert pids and _driver_pid(catalog, tmp_path / "ray") not in pids  # the tasks ran in the cluster's workers


def _driver_pid(catalog, out) -> int:
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        return con.execute("SELECT pid FROM runs WHERE output_path = ? ORDER BY started_at DESC LIMIT 1",
                           [str(out.resolve())]).fetchone()[0]
    finally:
        con.close()


def test_an_unreachable_cluster_address_is_refused_before_any_work(tmp_path):
    pipe = tmp_path / "p.yaml"
    pipe.write_text((REPO / "pipelines" / "decomposition.yaml").read_text())
    r = run_cli("run", str(pipe), "--input", str(write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "x"}])),
                "--output", str(tmp_path / "out"), "--catalog", str(tmp_path / "c.duckdb"), "--runner", "ray",
                "--ray-address", "127.0.0.1:1")
    assert r.returncode == 2 and "no Ray cluster answers" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def _retries(catalog, out) -> dict[str, float]:
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        rows = con.execute("""SELECT m.stage, m.value FROM metrics m JOIN runs r USING (run_id)
                              WHERE r.output_path = ? AND m.name = 'task_retries'""", [str(out.resolve())]).fetchall()
    finally:
        con.close()
    return dict(rows)


# (product, where a worker dies mid-task, the step that must show a retry)
KILLS = [("gateau-smollm2", "batch:hmg:0", "step-00"), ("utk", "group:utk:0", "step-01")]


@pytest.mark.parametrize("product,where,step", KILLS, ids=["model-stage", "group-step"])
def test_a_worker_killed_mid_task_is_retried_and_nothing_changes(product, where, step, real_docs, tmp_path, catalog,
                                                                 ray_address):
    pipe, inp = _pipeline(tmp_path, product, real_docs)
    _run(pipe, inp, tmp_path / "undisturbed", catalog, "--runner", "ray", "--ray-address", ray_address)
    flag = tmp_path / "killed-once"
    _run(pipe, inp, tmp_path / "killed", catalog, "--runner", "ray", "--ray-address", ray_address,
         env={"LONGFORGE_KILL_ONCE": where, "LONGFORGE_KILL_ONCE_FLAG": str(flag)})
    assert flag.exists(), "no worker reached the kill point"
    assert _prints(tmp_path / "killed") == _prints(tmp_path / "undisturbed")
    ids = pq.read_table(tmp_path / "killed" / "data", columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids))  # nothing written twice by the retried task
    run = {k: json.loads((tmp_path / k / ".longforge" / "run.json").read_text()) for k in ("killed", "undisturbed")}
    assert run["killed"]["records"] == run["undisturbed"]["records"] == len(ids)  # what the card and catalog say
    retries = _retries(catalog, tmp_path / "killed")
    assert any(name.startswith(step) for name in retries), retries
    assert sum(retries.values()) >= 1
    assert not _retries(catalog, tmp_path / "undisturbed")
